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
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.dataset as ds
import torch

from pipeline.data.features import scan_features
from pipeline.datasets import la_haute_borne as lhb
from pipeline.demo import SITES
from pipeline.demo.report import SCORE_DRAWS, write_report
from pipeline.errors import DataError, SpecError
from pipeline.jobs import runtime
from pipeline.jobs.prior_fit import PriorFitSpec, fit_core_prior
from pipeline.jobs.sites import run_site_paths, run_sites
from pipeline.jobs.sweep import run_sweep
from pipeline.method.encoder import Autoencoder
from pipeline.method.metrics import auroc
from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig
from pipeline.progress import duration
from pipeline.registry import Registry
from pipeline.sites import SiteSpec, load_site_spec
from pipeline.sites.align import Alignment, align_site
from pipeline.storage import Store
from pipeline.sweeps import SweepSpec, load_sweep_spec

# distribution matching (``--match``): at lambda 0.1 for 4,000 steps the latents' spread is 0.79-0.91 and
# their kNN NLL proxy that of the prior's own samples, at 3.5-7x the median reconstruction error of a
# lambda = 0 run of as many steps (docs/measured.md, the wind farm; benchmarks/alignment_modes.py). The demo
# runs it for the plain alignment's 1,500 steps (spread 0.74-0.99 on its four sites, 2026-12-06).
MATCH_LAMBDA = 0.1
MATCH_STEPS = 1500


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("flowprior-demo")
    store: str | None = None  # default: <out>/store
    sites: Path = SITES
    core_steps: int = 2000
    latent_dim: int = 7  # 98% of the pooled features' variance (nacelle and wind direction nearly coincide)
    width: int = 128
    depth: int = 3
    quick: bool = False  # CI-sized: a few hundred steps everywhere
    address: str | None = None
    sweep: Path | None = None  # a sweep spec over the demo's sites: sweep, then align with its choices
    match_lambda: float | None = None  # also align with distribution matching at this lambda (MATCH_LAMBDA)
    match_steps: int = MATCH_STEPS  # its steps (quick: the plain alignment's)
    tags: dict[str, str] = field(default_factory=dict)  # on every record the demo registers
    verbose: bool = False  # every line of every site step, and Ray's own output

    def core_spec(self) -> PriorFitSpec:
        """The core prior: the healthy 2014 rows of all four turbines, PCA to ``latent_dim``, a fresh run name."""
        steps = 300 if self.quick else self.core_steps
        return PriorFitSpec(
            features=str(lhb.PARQUET), columns=lhb.FEATURES, filters={"year": 2014, "fault": False},
            drop_nonfinite=True, latent_dim=self.latent_dim, projection="pca", normaliser="per-dim", width=self.width,
            depth=self.depth, fit=FitConfig(steps=steps, warmup=min(200, steps // 10)),
            report_every=max(50, steps // 8), name=f"demo-core-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")

    def sweep_spec(self, specs: list[SiteSpec]) -> SweepSpec | None:
        """The sweep spec with the demo's own site specs (quick: 200 steps in epochs of 50)."""
        if self.sweep is None:
            return None
        spec = load_sweep_spec(self.sweep)
        ours = {s.site: s for s in specs}
        if sorted(ours) != sorted(s.site for s in spec.sites):
            raise SpecError(f"{self.sweep}: sweeps {', '.join(s.site for s in spec.sites)} but the demo runs "
                             f"{', '.join(ours)}")
        spec = replace(spec, sites=tuple(ours[s.site] for s in spec.sites))
        if self.quick:
            spec = replace(spec, steps=200, epoch_steps=50,
                           scheduler=replace(spec.scheduler, grace_epochs=min(spec.scheduler.grace_epochs, 4)))
        return spec

    def site_specs(self) -> list[SiteSpec]:
        paths = sorted(self.sites.glob("*.yaml"))
        if not paths:
            raise SpecError(f"{self.sites}: no site specs (*.yaml)")
        specs = [load_site_spec(p) for p in paths]
        unknown = [s.site for s in specs if s.site not in lhb.TURBINES]
        if unknown:
            raise SpecError(f"{self.sites}: the demo runs the La Haute Borne turbines ({', '.join(lhb.TURBINES)}); "
                             f"{', '.join(unknown)} is not one (use `flowprior site ...` for other sites)")
        if not self.quick:
            return specs
        return [replace(s, finetune=replace(s.finetune, steps=100, refit_steps=200, log_every=50),
                        alignment=replace(s.alignment, steps=200, log_every=50, eval_points=1000)) for s in specs]

    def match_specs(self, specs: list[SiteSpec]) -> list[SiteSpec]:
        """The site specs aligned with distribution matching at ``match_lambda`` for ``match_steps``."""
        return [replace(s, alignment=replace(s.alignment, mode="match", lam=self.match_lambda,
                                             steps=s.alignment.steps if self.quick else self.match_steps))
                for s in specs]


def _rows(spec: SiteSpec, year: int) -> tuple[np.ndarray, np.ndarray]:
    """The site's observations as its spec selects them, but of ``year`` (features, fault labels), in file order."""
    scan = scan_features(spec.observations.uri, columns=spec.observations.columns,
                         filters={**spec.observations.filters, "year": year})
    table = ds.dataset([f.path for f in scan.files], filesystem=scan.filesystem()).to_table(
        columns=[*scan.read_columns, "fault"], filter=scan.arrow_filter())
    x = np.stack([table[c].to_numpy(zero_copy_only=False) for c in scan.read_columns], axis=1)  # (n, d_obs)
    complete = np.isfinite(x).all(axis=1)
    return x[complete].astype(np.float32), table["fault"].to_numpy(zero_copy_only=False)[complete]


@torch.no_grad()
def fault_scores(encoder: Autoencoder, prior: FlowPrior, x: np.ndarray, seed: int = 0,
                 chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-row anomaly scores of readings ``x`` (n, d_obs): ``L_align`` of the encoder's latent under
    ``prior`` (``SCORE_DRAWS`` draws, fixed noise) and the reconstruction error, each (n,)."""
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {"l_align": [], "recon": []}
    for start in range(0, len(x), chunk):  # bounded memory: chunk x draws x width at a time
        o = torch.from_numpy(x[start:start + chunk])
        parts["l_align"].append(prior.alignment_loss(encoder.encode(o), draws=SCORE_DRAWS, generator=generator))
        parts["recon"].append(encoder.reconstruction_error(o))
    return {name: torch.cat(p).numpy() for name, p in parts.items()}


def _auroc_table(per_site: dict[str, dict]) -> dict:
    """AUROC of each score per site and pooled (per year), where there are faults to find."""
    table = {}
    for year in (2015, 2014):
        pooled_scores: dict[str, list] = {}
        pooled_labels = []
        for site, data in per_site.items():
            labels, scores = data[year]["labels"], data[year]["scores"]
            pooled_labels.append(labels)
            for name, s in scores.items():
                pooled_scores.setdefault(name, []).append(s)
            if labels.any():
                table.setdefault(str(year), {})[site] = {
                    "faults": int(labels.sum()), "rows": len(labels),
                    **{n: auroc(torch.from_numpy(s), torch.from_numpy(labels)) for n, s in scores.items()}}
        labels = np.concatenate(pooled_labels)
        table.setdefault(str(year), {})["all"] = {
            "faults": int(labels.sum()), "rows": len(labels),
            **{n: auroc(torch.from_numpy(np.concatenate(s)), torch.from_numpy(labels))
               for n, s in pooled_scores.items()}}
    return table


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> dict:
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

    per_site, priors = {}, {}
    for spec, alignment, match in zip(specs, alignments, matched, strict=True):
        prior = priors[spec.site] = registry.load_prior(alignment.record.aligned_to)
        per_site[spec.site] = {}
        for year in (2015, 2014):
            x, labels = _rows(spec, year)
            aligned = fault_scores(alignment.aligned.model, prior, x, spec.seed)
            with torch.no_grad():
                recon_lambda0 = alignment.baseline.model.reconstruction_error(torch.from_numpy(x)).numpy()
            scores = {"l_align": aligned["l_align"], "recon_aligned": aligned["recon"], "recon_lambda0": recon_lambda0}
            if match is not None:
                matched_prior = registry.load_prior(match.record.aligned_to)
                scores["l_align_match"] = fault_scores(match.aligned.model, matched_prior, x, spec.seed)["l_align"]
            per_site[spec.site][year] = {"x": x, "labels": labels, "scores": scores}
    faults = _auroc_table(per_site)
    timings["scoring"] = time.perf_counter() - started - sum(timings.values())

    summary = {
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
