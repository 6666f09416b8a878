"""A sweep record as figures and tables: the per-site Pareto plot and the chosen settings.

Used by ``flowprior sweep --report DIR`` (a page of its own) and by the demo's report.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from pipeline.formatting import number  # noqa: E402
from pipeline.registry import Record  # noqa: E402
from pipeline.sweeps.objective import Selection, pareto_front  # noqa: E402


def _selection(record: Record) -> Selection:
    return Selection(**record.config["spec"]["select"])


def plot_pareto(record: Record, path: Path) -> str:
    """Per site: reconstruction error vs alignment score of every trial that ran to the end (lambda
    beside each) and of those stopped early (lambda@epoch, grey), the lambda = 0 baseline, the
    reconstruction bound, the Pareto front and the choice."""
    selection, choices = _selection(record), record.config["choices"]
    sites = list(choices)
    fig, axes = plt.subplots(1, len(sites), figsize=(4.2 * len(sites), 3.8), squeeze=False)
    for ax, site in zip(axes[0], sites, strict=True):
        choice = choices[site]
        target = choice["target_knn_nll"]
        done = [t for t in record.config["trials"] if t["site"] == site and t["completed"]]
        points = [(selection.reconstruction(t["final"]), selection.score(t["final"], target)) for t in done]
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0", s=18, label="trials (ran to the end)")
        for t, (x, y) in zip(done, points, strict=True):
            ax.annotate(f"{t['config']['lam']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        stopped = [t for t in record.config["trials"] if t["site"] == site and not t["completed"]]
        if stopped:  # where early stopping left them: earlier in training, so not comparable with the rest
            early = [(selection.reconstruction(t["final"]), selection.score(t["final"], target)) for t in stopped]
            ax.scatter([p[0] for p in early], [p[1] for p in early], color="0.6", marker=".", s=14,
                       label="stopped early (at their last epoch)")
            for t, (x, y) in zip(stopped, early, strict=True):
                ax.annotate(f"{t['config']['lam']:g}@{t['epochs']}", (x, y), fontsize=6, color="0.5",
                            xytext=(3, -6), textcoords="offset points")
        front = [points[i] for i in pareto_front(points)]
        ax.plot([p[0] for p in front], [p[1] for p in front], color="C0", lw=1, label="Pareto front")
        base = record.config["baselines"][site]["final"]
        base_point = (selection.reconstruction(base), selection.score(base, target))
        ax.scatter([base_point[0]], [base_point[1]], color="k", marker="x", label="lambda = 0")
        ax.axvline((1 + selection.recon_tolerance) * base_point[0], color="k", ls="--", lw=1,
                   label=f"recon bound (+{selection.recon_tolerance:.0%})")
        chosen = next(p for t, p in zip(done, points, strict=True) if t["trial"] == choice["trial"])
        ax.scatter([chosen[0]], [chosen[1]], s=160, facecolors="none", edgecolors="C3", lw=2,
                   label=f"chosen: lambda {choice['lam']:g}")
        ax.set(xscale="log", title=site, xlabel=f"reconstruction error ({selection.recon})",
               ylabel="kNN NLL proxy" if selection.metric == "knn_nll" else "|kNN NLL - target's|")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def cell(value: object) -> str:
    """One table cell: a float to 4 significant digits, a null (a NaN the record stored as null) or a float
    that is not finite as ``n/a``, anything else as escaped text."""
    if value is None or isinstance(value, float):
        return number(value, ".4g")
    return html.escape(str(value))


def table(header: list[str], rows: list[list]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows) + "</table>")


CHOICE_NUMBERS = ("lam", "lr", "draws", "steps", "recon", "baseline_recon", "recon_median", "baseline_recon_median",
                  "knn_nll", "baseline_knn_nll")


def choices_table(record: Record) -> str:
    """The setting chosen per site; a number an older sweep's record lacks reads ``n/a``."""
    rows = [[site, c.get("mode", "align"), *(c.get(k) for k in CHOICE_NUMBERS), c.get("target_knn_nll") or "-",
             c.get("spread"), c.get("objective"), "yes" if c.get("feasible") else "no", c.get("trial")]
            for site, c in record.config["choices"].items()]
    return table(["site", "mode", "lambda", "lr", "draws K", "steps", "recon", "recon (lambda 0)", "median recon",
                  "median recon (lambda 0)", "kNN NLL", "kNN NLL (lambda 0)", "kNN NLL (target's own)", "spread",
                  "objective", "within bound", "trial"], rows)


def summary(record: Record) -> str:
    """One paragraph; every value from the record is escaped (a record is data, never markup)."""
    m, spec = record.metrics, record.config["spec"]
    s = _selection(record)
    e = lambda v: html.escape(str(v))  # noqa: E731
    fraction = m.get("compute_fraction")
    share = f"{fraction:.0%}" if isinstance(fraction, (int, float)) else e(fraction)
    return (f"<p>Sweep <code>{e(record.id)}</code> ({e(record.name or '')}): {e(m['trials'])} trials "
            f"over {e(', '.join(f'{k} {v}' for k, v in spec['space'].items()))}, scheduler "
            f"{e(spec['scheduler']['type'])}; {e(m['completed'])} ran to the end; {e(m['trial_epochs'])} of "
            f"{e(m['full_epochs'])} trial-epochs ({share} of running every trial to the end), plus "
            f"{e(m['baseline_epochs'])} for the lambda = 0 baselines. Choice per site: lowest "
            f"{'kNN NLL proxy' if s.metric == 'knn_nll' else 'distance to the target kNN NLL'} whose {e(s.recon)} "
            f"reconstruction error is within {s.recon_tolerance:.0%} of the lambda = 0 run's (penalty "
            f"{s.penalty:g} per unit of excess ratio otherwise).</p>")


def write_sweep_report(out: Path, record: Record) -> Path:
    """``out/sweep.html`` with the Pareto figure and the tables of choices and trials."""
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_pareto(record, out / "sweep_pareto.png")
    trials = table(["trial", "site", "mode", "lambda", "lr", "draws", "epochs", "recon", "median recon", "kNN NLL",
                    "spread", "objective"],
                   [[t["trial"], t["site"], t["config"].get("mode", "align"), t["config"]["lam"], t["config"]["lr"],
                     t["config"]["draws"], t["epochs"],
                     *[t["final"].get(k, "-") for k in ("recon", "recon_median", "knn_nll", "spread", "objective")]]
                    for t in record.config["trials"]])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>flowprior sweep {html.escape(record.id)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>Sweep {html.escape(record.name or record.id)}</h1>{summary(record)}
<h2>Chosen settings</h2>{choices_table(record)}
<h2>Reconstruction vs alignment</h2><img src="{figure}">
<h2>Every trial</h2><p>Trials stopped early show their last epoch's numbers.</p>{trials}
</body></html>"""
    path = out / "sweep.html"
    path.write_text(page)
    return path.resolve()
