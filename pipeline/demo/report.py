"""The demo's HTML report: one page, PNG figures beside it, every number from the registry's records."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.method.prior import FlowPrior  # noqa: E402
from pipeline.registry import Record, Registry  # noqa: E402
from pipeline.sites.models import load_prior  # noqa: E402
from pipeline.sweeps import report as sweeps_report  # noqa: E402

SCORE_DRAWS = 8  # noise draws per row when scoring readings by L_align
CAPTIONS = {  # what to look for in each figure
    "decisions": "Bars coloured by decision. A site fine-tunes when a 100-step probe fine-tune gains more than its "
                 "dashed line (finetune_gain), and refits when the core's held-out FM loss on it is more than its "
                 "dashed line (refit_fm) times the core's own; a line off the chart is far above every site.",
    "prior_fits": "Left: the core prior's FM loss falling as Ray Train fits it. Right: each site prior's held-out FM "
                  "on its site against the core prior's on the same rows (dashed): below the dashed line, the site "
                  "prior explains its site better than the core does.",
    "alignment_curves": "During encoder training L_align (blue) falls as the latents move toward the prior's mass, "
                        "and so does their kNN NLL proxy (red).",
    "latents": "Each site's latents over samples of its prior (grey), on the samples' top two principal axes: the "
               "lambda = 0 latents (orange) lie anywhere, the aligned ones (blue) over the prior's mass; "
               "distribution matching (green, with --match) spreads them over all of it.",
    "tradeoff": "What alignment costs: each arrow goes from a site's lambda = 0 encoder (x) to its aligned one (o); "
                "right is worse reconstruction, down is latents closer to the prior.",
    "pareto": "Every trial that ran to the end: reconstruction against the alignment score, the chosen setting "
              "circled; the trials on the lower-left edge are the trade-offs worth having.",
}


def figure(name: str, caption: str) -> str:
    """A figure with its one-line caption."""
    return f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption>' \
           "</figure>"


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


DECISION_COLOURS = {"reuse": "C0", "finetune": "C1", "refit": "C3"}


def plot_decisions(checks: dict[str, Record], path: Path) -> str:
    """The numbers each site's decision read, each bar marked with its own site's threshold (a spec can set them)."""
    sites = list(checks)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, threshold, title in (
        (axes[0], "probe_gain", "finetune_gain", "held-out FM gain of a probe fine-tune (finetune above --)"),
        (axes[1], "fm_ratio", "refit_fm", "held-out FM loss / core's own (refit above --)"),
        (axes[2], "mmd", None, "MMD^2, prior samples vs site"),
    ):
        values = [checks[s].metrics[key] for s in sites]
        ax.bar(sites, values, color=[DECISION_COLOURS[checks[s].config["decision"]] for s in sites])
        for i, s in enumerate(sites):
            bar = checks[s].config["thresholds"].get(threshold) if threshold else None
            if bar is not None and bar <= 1.5 * max(values):  # off the chart: far above every site
                ax.hlines(bar, i - 0.4, i + 0.4, color="k", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in DECISION_COLOURS.values()]
    axes[2].legend(handles, list(DECISION_COLOURS), fontsize=8)
    return _save(fig, path)


def plot_prior_fits(core: FlowPrior, site_priors: dict[str, Record], path: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    history = core.info.get("history", [])
    axes[0].plot([h["step"] for h in history], [h["train_fm"] for h in history], label="train FM")
    axes[0].plot([h["step"] for h in history], [h["heldout_fm"] for h in history], label="held-out FM")
    axes[0].set(title="core prior (Ray Train, 2014, all turbines)", xlabel="step", ylabel="L_FM")
    axes[0].legend(fontsize=8)
    for i, (site, record) in enumerate(site_priors.items()):
        h = record.config["history"]
        axes[1].plot([e["step"] for e in h], [e["heldout_fm"] for e in h], color=f"C{i}",
                     label=f"{site} ({record.config['mode']})")
        axes[1].axhline(record.metrics["heldout_fm_core"], color=f"C{i}", ls="--", lw=1)
    axes[1].set(title="site priors: held-out FM on the site (dashed: core prior)", xlabel="step")
    if site_priors:
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "every site reuses the core prior", ha="center", transform=axes[1].transAxes)
    return _save(fig, path)


def plot_alignment_curves(alignments: list, path: Path) -> str:
    """L_align and the kNN NLL proxy of the latents during encoder training (the paper's Fig. 4)."""
    fig, axes = plt.subplots(1, len(alignments), figsize=(3.6 * len(alignments), 3.2), squeeze=False)
    for ax, a in zip(axes[0], alignments, strict=True):
        h = a.aligned.history
        steps = [e["step"] for e in h]
        ax.plot(steps, [e["l_align"] for e in h], color="C0", label="L_align")
        ax.set(title=f"{a.record.site}, lambda={a.record.config['lambda']:g}", xlabel="step")
        ax.set_ylabel("L_align (mean over evaluation rows)", color="C0")
        ax.set_yscale("log")
        twin = ax.twinx()
        twin.plot(steps, [e["knn_nll"] for e in h], color="C3", label="kNN NLL proxy")
        twin.set_ylabel("kNN NLL proxy", color="C3")
    return _save(fig, path)


def plot_latents(alignments: list, matched: list, priors: dict[str, FlowPrior], observations: dict[str, np.ndarray],
                 path: Path) -> str:
    """Latents vs prior samples, on the prior samples' top-2 PCs: the plain aligned and the lambda = 0
    encoder (top row) and, where they ran, the distribution-matching encoders (bottom row)."""
    rows = 2 if any(m is not None for m in matched) else 1
    fig, axes = plt.subplots(rows, len(alignments), figsize=(3.6 * len(alignments), 3.6 * rows), squeeze=False)
    for column, (a, m) in enumerate(zip(alignments, matched, strict=True)):
        prior = priors[a.record.site]
        samples = prior.sample(1500, generator=torch.Generator().manual_seed(0))  # (1500, d1)
        mean = samples.mean(0)
        _, _, v = torch.linalg.svd(samples - mean, full_matrices=False)
        to_2d = lambda y, mean=mean, v=v: ((y - mean) @ v[:2].T).numpy()  # noqa: E731  (n, d1) -> (n, 2)
        o = torch.from_numpy(observations[a.record.site][:1500])
        with torch.no_grad():
            panels = [((a.baseline.model.encode(o), "lambda = 0", "C1"),
                       (a.aligned.model.encode(o), f"L_align, lambda {a.record.config['lambda']:g}", "C0"))]
            if m is not None:
                panels.append(((m.aligned.model.encode(o), f"match, lambda {m.record.config['lambda']:g}", "C2"),))
        lim = np.abs(to_2d(samples)).max() * 1.5
        for row, latents in enumerate(panels):
            ax = axes[row][column]
            for y, label, colour in ((samples, "prior samples", "0.6"), *latents):
                p = to_2d(y)
                ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, color=colour, label=label)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=a.record.site)
            ax.legend(fontsize=7, markerscale=4, loc="upper right")
    return _save(fig, path)


def plot_tradeoff(alignments: list, path: Path) -> str:
    """Reconstruction error vs kNN NLL proxy per site: lambda = 0 -> aligned."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, a in enumerate(alignments):
        m = a.record.metrics
        ax.annotate("", (m["recon"], m["knn_nll"]), (m["baseline_recon"], m["baseline_knn_nll"]),
                    arrowprops={"arrowstyle": "->", "color": f"C{i}"})
        ax.scatter([m["baseline_recon"]], [m["baseline_knn_nll"]], color=f"C{i}", marker="x")
        ax.scatter([m["recon"]], [m["knn_nll"]], color=f"C{i}", label=a.record.site)
    ax.set(xscale="log", xlabel="reconstruction error (standardised MSE)", ylabel="kNN NLL proxy of latents",
           title="lambda = 0 (x) -> aligned (o)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _figures(out: Path, core_prior: FlowPrior, checks: dict, site_priors: dict, alignments: list, matched: list,
             priors: dict, observations: dict[str, np.ndarray]) -> dict[str, str]:
    """The page's figures, drawn into ``out``: each one's file name by its caption's key."""
    return {
        "decisions": plot_decisions(checks, out / "decisions.png"),
        "prior_fits": plot_prior_fits(core_prior, site_priors, out / "prior_fits.png"),
        "alignment_curves": plot_alignment_curves(alignments, out / "alignment_curves.png"),
        "latents": plot_latents(alignments, matched, priors, observations, out / "latents.png"),
        "tradeoff": plot_tradeoff(alignments, out / "tradeoff.png"),
    }


def _sweep_section(out: Path, sweep: Record | None) -> str:
    """The sweep's summary, chosen settings and Pareto figure; empty without a sweep."""
    if sweep is None:
        return ""
    return (f"<h2>Sweep: lambda per site</h2>{sweeps_report.summary(sweep)}"
            f"<h3>Chosen settings</h3>{sweeps_report.choices_table(sweep)}"
            f"<h3>Reconstruction vs alignment, every trial that ran to the end (chosen: circled)</h3>"
            + figure(sweeps_report.plot_pareto(sweep, out / 'sweep_pareto.png'), CAPTIONS["pareto"]))


def _decisions_table(checks: dict, summary: dict) -> str:
    """Each site's decision and the numbers it read."""
    return sweeps_report.table(["site", "what it is", "decision", "probe gain", "fm_ratio", "nll_gap", "mmd",
                                "site FM", "core FM", "check record"],
                               [[s, summary["sites"][s].get("description") or "-", c.config["decision"],
                                 *[c.metrics[k] for k in ("probe_gain", "fm_ratio", "nll_gap", "mmd", "fm_site",
                                                          "fm_core")],
                                 c.id] for s, c in checks.items()])


def _encoders_table(alignments: list) -> str:
    """Each site's aligned encoder against its lambda = 0 one."""
    return sweeps_report.table(["site", "lambda", "recon", "recon (lambda 0)", "median recon",
                                "median recon (lambda 0)", "L_align", "L_align (lambda 0)", "kNN NLL",
                                "kNN NLL (lambda 0)", "kNN NLL (target's own)", "spread", "spread (lambda 0)",
                                "aligned to"],
                               [[a.record.site, a.record.config["lambda"], *[a.record.metrics[k] for k in (
                                   "recon", "baseline_recon", "recon_median", "baseline_recon_median", "l_align",
                                   "baseline_l_align", "knn_nll", "baseline_knn_nll", "target_knn_nll", "spread",
                                   "baseline_spread")], a.record.aligned_to] for a in alignments])


def _matching_table(alignments: list, matched: list) -> str:
    """The distribution-matching encoders beside the L_align ones, or a note that they did not run."""
    if all(m is None for m in matched):
        return "<p>Not run: <code>flowprior demo --match</code> also aligns every site with distribution matching " \
               "and compares it here.</p>"
    return sweeps_report.table(
        ["site", "lambda", "recon", "median recon", "median recon / lambda 0", "kNN NLL", "kNN NLL (target's own)",
         "spread", "spread (L_align)", "encoder"],
        [[m.record.site, m.record.config["lambda"], m.record.metrics["recon"], m.record.metrics["recon_median"],
          m.record.metrics["recon_median"] / m.record.metrics["baseline_recon_median"], m.record.metrics["knn_nll"],
          m.record.metrics["target_knn_nll"] or "-", m.record.metrics["spread"], a.record.metrics["spread"],
          m.record.id]
         for a, m in zip(alignments, matched, strict=True) if m is not None])


def _faults_table(summary: dict) -> str:
    """The AUROC of each fault score, per year and site."""
    fault_rows = [[year, site, v["faults"], v["rows"], v["l_align"], v.get("l_align_match", "-"), v["recon_lambda0"],
                   v["recon_aligned"]] for year, sites in summary["faults_auroc"].items() for site, v in sites.items()]
    return sweeps_report.table(["year", "site", "fault rows", "rows", "AUROC L_align", "AUROC L_align (match)",
                                "AUROC recon (lambda 0)", "AUROC recon (aligned)"], fault_rows)


def _lineage(registry: Registry, alignments: list) -> str:
    """Each aligned encoder's records back to its data, with their fingerprints."""
    return "".join(
        f"<h3>{html.escape(a.record.site)}</h3><ul>" + "".join(
            f"<li><code>{html.escape(r.id)}</code> ({html.escape(r.kind)}"
            f"{', ' + html.escape(r.config.get('mode', '')) if r.kind == 'site-prior' else ''}), trained on "
            f"<code>{html.escape((r.fingerprint or '-')[:16])}</code></li>" for r in registry.lineage(a.record.id))
        + "</ul>" for a in alignments)


def _page(core: Record, store_uri: str, figures: dict[str, str], sections: dict[str, str]) -> str:
    """The whole HTML page around its figures and ``sections`` (decisions, sweep, encoders, matching, faults,
    lineage)."""
    decisions, sweep_section, encoders = sections["decisions"], sections["sweep"], sections["encoders"]
    matching, faults, lineage = sections["matching"], sections["faults"], sections["lineage"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>flowprior demo: La Haute Borne</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} img{{max-width:100%}} figure{{margin:8px 0 18px}}
figcaption{{font-size:13px;color:#444}}</style></head><body>
<h1>flowprior demo: La Haute Borne wind farm</h1>
<p>Core prior <code>{html.escape(core.id)}</code> fitted with Ray Train on the healthy 2014 readings of all four
turbines; each turbine checked on its healthy 2015 readings, its encoder trained on all complete 2015 readings.
Store: <code>{html.escape(store_uri)}</code>.
Data: ENGIE La Haute Borne open data (Etalab Open Licence 2.0).</p>
<h2>Site decisions</h2>{decisions}{figure(figures['decisions'], CAPTIONS['decisions'])}
<h2>Prior fits</h2>{figure(figures['prior_fits'], CAPTIONS['prior_fits'])}
{sweep_section}
<h2>Encoder alignment</h2>{encoders}
<h3>L_align vs kNN NLL proxy during training</h3>{figure(figures['alignment_curves'], CAPTIONS['alignment_curves'])}
<h3>Distribution matching (<code>alignment: {{mode: match}}</code>)</h3>{matching}
<h3>Latents vs prior samples</h3>{figure(figures['latents'], CAPTIONS['latents'])}
<h3>Reconstruction vs alignment</h3>{figure(figures['tradeoff'], CAPTIONS['tradeoff'])}
<h2>Flagging sensor faults</h2><p>Rows with physically impossible readings (temperature below -40 C, pitch outside
[-5, 95] deg) scored by L_align of their latent under the site's prior ({SCORE_DRAWS} noise draws) and by the
reconstruction error of the lambda = 0 autoencoder. 2014 rows were never seen by the encoders.</p>{faults}
<h2>Lineage</h2>{lineage}
<h2>Every number</h2><p>The run's summary, with each site's check, prior and encoder numbers and the records
they came from: <a href="summary.json">summary.json</a>; any record in full: <code>flowprior registry show ID
--store {html.escape(store_uri)}</code>.</p>
</body></html>"""


def write_report(out: Path, registry: Registry, core: Record, checks: dict, site_priors: dict, alignments: list,
                 matched: list, priors: dict, per_site: dict, summary: dict, sweep: Record | None = None) -> Path:
    """Write ``out/report.html`` and its figures beside it; the page's path."""
    core_prior = load_prior(registry, core.id)
    observations = {site: data[2015]["x"] for site, data in per_site.items()}
    figures = _figures(out, core_prior, checks, site_priors, alignments, matched, priors, observations)
    sections = {"sweep": _sweep_section(out, sweep), "decisions": _decisions_table(checks, summary),
                "encoders": _encoders_table(alignments), "matching": _matching_table(alignments, matched),
                "faults": _faults_table(summary), "lineage": _lineage(registry, alignments)}
    path = out / "report.html"
    path.write_text(_page(core, registry.store.uri, figures, sections))
    return path.resolve()
