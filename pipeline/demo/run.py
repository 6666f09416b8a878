"""The demo pipeline: core prior -> site checks -> site priors -> aligned encoders -> fault scores.

    run_demo(DemoSettings(out=Path("flowprior-demo")))

1. fit the core prior on the healthy 2014 rows of all four turbines (Ray Train, 1 worker);
2. check every site (the shipped specs, ``pipeline/demo/sites/*.yaml``: its healthy 2015 rows) against
   it and record the decision, then fine-tune or refit where the decision says so: each site's path a
   chain of Ray tasks (``site run --until finetune``), the sites in parallel;
3. with ``sweep``: sweep lambda (and friends) per site with Ray Tune (``pipeline.jobs.sweep``);
   align every site's encoder to its prior -- with the sweep's choice if there was one -- and a
   lambda = 0 baseline, in parallel; with ``match_lambda``, first also with distribution matching
   (``mode: match``, ``match_steps``) for comparison (registered too; the plain encoders, registered
   after, are current);
4. score every complete 2015 (and held-out 2014) reading by ``L_align`` of its latent under the
   site's prior and by the baseline's reconstruction error, and measure how well each flags the
   rows with physically impossible readings (AUROC);
5. write ``report.html`` (PNG figures) and ``summary.json`` under ``out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.demo.faults import auroc_table, score_sites
from pipeline.demo.report import write_report
from pipeline.demo.settings import DemoSettings
from pipeline.errors import DataError
from pipeline.jobs import runtime
from pipeline.jobs.prior_fit import fit_core_prior
from pipeline.jobs.sites import run_site_paths, run_sites
from pipeline.jobs.sweep import run_sweep
from pipeline.progress import Say, duration
from pipeline.registry import Record, Registry
from pipeline.sites import SiteSpec
from pipeline.sites.align import Alignment, align_site
from pipeline.storage import Store


def _summary(settings: DemoSettings, store: Store, core: Record, specs: list[SiteSpec], checks: dict,
             site_priors: dict, alignments: list[Alignment], matched: list[Alignment | None], faults: dict,
             sweep: Record | None) -> dict:
    """What ``summary.json`` holds: the core prior, each site's decision, site prior and encoders, the fault
    AUROCs and the sweep's choices."""
    return {
        "store": store.uri, "core": {"id": core.id, "metrics": core.metrics},
        "sites": {spec.site: {
            "description": spec.description, "decision": checks[spec.site].config["decision"],
            "check": checks[spec.site].id,
            "check_metrics": checks[spec.site].metrics, "thresholds": checks[spec.site].config["thresholds"],
            "site_prior": site_priors[spec.site].id if spec.site in site_priors else None,
            "site_prior_metrics": site_priors[spec.site].metrics if spec.site in site_priors else None,
            "encoder": a.record.id, "aligned_to": a.record.aligned_to, "lambda": a.record.config["lambda"],
            "metrics": a.record.metrics,
            "match": {"encoder": m.record.id, "lambda": m.record.config["lambda"], "metrics": m.record.metrics}
            if m is not None else None} for spec, a, m in zip(specs, alignments, matched, strict=True)},
        "faults_auroc": faults, "quick": settings.quick,
        "sweep": {"id": sweep.id, "metrics": sweep.metrics, "choices": sweep.config["choices"]} if sweep else None}


def run_demo(settings: DemoSettings, say: Say = print) -> dict:
    """Run the pipeline (module docstring) and return the summary also written to ``summary.json``."""
    started = time.perf_counter()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    specs = settings.site_specs()
    store = Store.open(settings.store or str(out / "store"))
    registry = Registry(store)
    say(f"[demo] {len(specs)} sites, store {store.uri}:")
    for spec in specs:
        say(f"[demo]   {spec.site}: {spec.description or spec.target.filters}")
    runtime.connect(settings.address, verbose=settings.verbose)
    ray_logs = _link_ray_logs(out)

    tags = settings.tags
    core = fit_core_prior(settings.core_spec(), store, address=settings.address, say=say, tags=tags)
    timings = {"core_fit": time.perf_counter() - started}

    # each site: its check, then its fine-tune or refit where the check says so
    paths = run_site_paths(specs, store, until="finetune", address=settings.address, say=say, prior_id=core.id,
                           tags=tags, verbose=settings.verbose)
    failed = [p for p in paths if p.failed]
    if failed:
        raise DataError("; ".join(f"site {p.site} failed at {p.failed}" for p in failed))
    checks = {p.site: p.check for p in paths}
    site_priors = {p.site: p.site_prior for p in paths if p.site_prior}
    timings["site_paths"] = time.perf_counter() - started - sum(timings.values())
    sweep_spec = settings.sweep_spec(specs)
    sweep = None
    if sweep_spec:
        result = run_sweep(sweep_spec, store, settings.address, say=say, tags=tags)
        say(f"[demo] {result.summary()}")
        sweep = result.record
    timings["sweep"] = time.perf_counter() - started - sum(timings.values())
    matched: list[Alignment | None] = [None] * len(specs)
    if settings.match_lambda is not None:
        matched = run_sites(align_site, settings.match_specs(specs), store, settings.address, say=say, tags=tags,
                            verbose=settings.verbose)
    alignments: list[Alignment] = run_sites(align_site, specs, store, settings.address, say=say,
                                            sweep_id=sweep.id if sweep else None, tags=tags, verbose=settings.verbose)
    timings["alignment"] = time.perf_counter() - started - sum(timings.values())

    per_site, priors = score_sites(registry, specs, alignments, matched)
    faults = auroc_table(per_site)
    timings["scoring"] = time.perf_counter() - started - sum(timings.values())

    summary = _summary(settings, store, core, specs, checks, site_priors, alignments, matched, faults, sweep)
    report = write_report(out, registry, core, checks, site_priors, alignments, matched, priors, per_site, summary,
                          sweep)
    timings["report"] = time.perf_counter() - started - sum(timings.values())
    summary["seconds"] = {**timings, "total": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    say(format_summary(summary))
    if ray_logs:
        say(f"[demo] Ray's own logs (its workers' output included): {ray_logs}")
    say(f"[demo] finished in {duration(summary['seconds']['total'])}; report: {report}")
    return summary


def _link_ray_logs(out: Path) -> Path | None:
    """``<out>/ray-logs``, pointing at the local Ray's log folder, where its workers' output went; None on a
    cluster (the logs are on its nodes) or where links cannot be made."""
    folder = runtime.logs_folder()
    if folder is None or not Path(folder).is_dir():
        return None
    link = out / "ray-logs"
    try:
        link.unlink(missing_ok=True)
        link.symlink_to(folder, target_is_directory=True)
    except OSError:
        return None
    return link


def format_summary(summary: dict) -> str:
    lines = [f"{'site':8s} {'decision':9s} {'probe':>6s} {'fm_ratio':>8s} {'nll_gap':>8s} {'prior':>10s} {'recon':>7s} "
             f"{'recon@0':>7s} {'knn_nll':>7s} {'nll@0':>7s} {'nll tgt':>7s} {'spread':>6s} {'AUROC L_align':>13s} "
             f"{'AUROC recon@0':>13s}"]
    auroc_2015 = summary["faults_auroc"]["2015"]
    for site, s in summary["sites"].items():
        m, c, a = s["metrics"], s["check_metrics"], auroc_2015.get(site, {})
        lines.append(f"{site:8s} {s['decision']:9s} {c['probe_gain']:6.1%} {c['fm_ratio']:8.3f} {c['nll_gap']:+8.3f} "
                     f"{'site' if s['site_prior'] else 'core':>10s} {m['recon']:7.4f} {m['baseline_recon']:7.4f} "
                     f"{m['knn_nll']:7.3f} {m['baseline_knn_nll']:7.3f} {m['target_knn_nll'] or float('nan'):7.3f} "
                     f"{m['spread']:6.2f} "
                     f"{a.get('l_align', float('nan')):13.3f} {a.get('recon_lambda0', float('nan')):13.3f}")
    pooled = auroc_2015["all"]
    lines.append(f"faults 2015, all sites ({pooled['faults']} of {pooled['rows']} rows): AUROC L_align "
                 f"{pooled['l_align']:.3f}, lambda=0 reconstruction {pooled['recon_lambda0']:.3f}, aligned "
                 f"reconstruction {pooled['recon_aligned']:.3f}")
    for site, s in summary["sites"].items():
        if s["match"] is not None:
            m = s["match"]["metrics"]
            lines.append(f"{site:8s} match     lambda {s['match']['lambda']:g}: recon {m['recon']:.4f}  median x"
                         f"{m['recon_median'] / m['baseline_recon_median']:.2f} of lambda 0  "
                         f"knn_nll {m['knn_nll']:.3f} "
                         f"(target {m['target_knn_nll'] or float('nan'):.3f})  spread {m['spread']:.2f}")
    for year, sites in summary["faults_auroc"].items():
        if "l_align_match" in sites["all"]:
            lines.append(f"faults {year}, all sites: AUROC L_align plain {sites['all']['l_align']:.3f}, "
                         f"match {sites['all']['l_align_match']:.3f}, lambda=0 reconstruction "
                         f"{sites['all']['recon_lambda0']:.3f}")
    return "\n".join(lines)
