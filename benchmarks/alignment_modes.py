"""Plain alignment vs distribution matching on the wind farm: shape of the latents, reconstruction, faults.

    python benchmarks/alignment_modes.py [--core-steps 2000] [--lambdas 0.01] [--match-lambdas 0.1 0.3]
                                         [--match-steps 4000]

On the bundled La Haute Borne data, in one process (the method library, no Ray), one run:

1. fit the core prior on the healthy 2014 rows of all four turbines (the demo's settings);
2. for each turbine, train its encoder (its spec: observations, widths, steps) against the core at
   lambda = 0, with ``L_align`` (``mode: align``) at ``--lambdas`` and with distribution matching
   (``mode: match``) at ``--match-lambdas`` for ``--match-steps`` steps;
3. report the latents' spread ratio and kNN NLL proxy against the target's own and the prior's own
   samples', on all observations (unlabelled faults included, as the encoder trains) and on held-out
   healthy target rows (what the target describes), the median reconstruction error against
   lambda = 0's, and the AUROC with which each encoder's ``L_align`` score flags the 2014 rows with
   impossible readings (rows it never saw), next to lambda = 0's reconstruction error; draw each
   turbine's latents of the held-out healthy rows (first two axes of prior space) for plain and
   matching runs beside the prior's own samples. Each run's reconstruction is compared with a
   lambda = 0 run of as many steps.

Writes ``benchmarks/results/alignment_modes.json`` and ``alignment_modes.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.data import read_features  # noqa: E402
from pipeline.data.split import split_indices  # noqa: E402
from pipeline.datasets import la_haute_borne as lhb  # noqa: E402
from pipeline.demo.faults import fault_scores, site_rows  # noqa: E402
from pipeline.demo.settings import DemoSettings  # noqa: E402
from pipeline.method.configs import FitConfig  # noqa: E402
from pipeline.method.encoder import train_encoder  # noqa: E402
from pipeline.method.metrics import auroc, knn_nll, spread_ratio  # noqa: E402
from pipeline.method.prior import FlowPrior  # noqa: E402
from pipeline.sites import load_site_spec  # noqa: E402
from pipeline.sites.align import METRIC_POINTS, alignment_data  # noqa: E402

DEMO = DemoSettings()
CORE = {"latent_dim": DEMO.latent_dim, "projection": "pca", "normaliser": "per-dim", "width": DEMO.width,
        "depth": DEMO.depth}


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC of ``scores`` flagging ``labels``; None where there is no fault to find."""
    return round(auroc(torch.from_numpy(scores), torch.from_numpy(labels)), 4) if labels.any() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core-steps", type=int, default=DEMO.core_steps)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01], help="plain L_align runs")
    parser.add_argument("--match-lambdas", type=float, nargs="+", default=[0.1, 0.3], help="matching runs")
    parser.add_argument("--match-steps", type=int, default=4000,
                        help="steps of the matching runs (default 4000; the plain runs take their spec's)")
    parser.add_argument("--turbines", nargs="+", default=list(lhb.TURBINES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    pool = read_features(str(lhb.PARQUET), columns=lhb.FEATURES, filters={"year": 2014, "fault": False},
                         drop_nonfinite=True).values
    train, _ = split_indices(pool, 0.1, seed=0)
    core = FlowPrior.fit(pool[train], **CORE, fit=FitConfig(steps=args.core_steps), seed=0)
    own = core.sample(2000, generator=torch.Generator().manual_seed(0))
    print(f"core fitted ({time.perf_counter() - started:.0f} s)", flush=True)

    rows, latents, pooled = [], {}, {}
    for turbine in args.turbines:
        spec = load_site_spec(DEMO.sites / f"{turbine}.yaml")
        observations, z_target, reference = alignment_data(spec, core)
        # held-out healthy rows: alignment_data's permutation, the rows after its target points
        healthy = spec.target.read().values
        order = torch.randperm(len(healthy), generator=torch.Generator().manual_seed(spec.seed)).numpy()
        healthy = torch.from_numpy(healthy[order[METRIC_POINTS:METRIC_POINTS + 2000]])
        samples = {"prior_samples_knn_nll": knn_nll(own, z_target).mean().item(),
                   "prior_samples_spread": spread_ratio(own, z_target)}
        x_2014, labels_2014 = site_rows(turbine, 2014)
        # each run's reconstruction is compared with a lambda = 0 run of as many steps
        plain, match = spec.alignment.steps, args.match_steps
        runs = ([("align", 0.0, plain)] + ([("align", 0.0, match)] if match != plain else [])
                + [("align", lam, plain) for lam in args.lambdas]
                + [("match", lam, match) for lam in args.match_lambdas])
        baselines = {}
        for mode, lam, steps in runs:
            start = time.perf_counter()
            run = train_encoder(observations.values, core, replace(spec.alignment, lam=lam, mode=mode, steps=steps),
                                z_target, spec.encoder.layout(), seed=spec.seed)
            scores = fault_scores(run.model, core, x_2014)
            if lam == 0:
                baselines[steps] = {"recon_median": run.metrics["recon_median"], "recon_scores": scores["recon"]}
            baseline = baselines[steps]
            with torch.no_grad():
                y_healthy = run.model.encode(healthy)
            latents[(turbine, mode, lam, steps)] = y_healthy
            row = {"site": turbine, "mode": mode, "lambda": lam, "steps": steps, **run.metrics,
                   "target_knn_nll": reference, **samples,
                   "healthy_knn_nll": knn_nll(y_healthy, z_target).mean().item(),
                   "healthy_spread": spread_ratio(y_healthy, z_target),
                   "recon_median_vs_lambda0": run.metrics["recon_median"] / baseline["recon_median"],
                   "auroc_2014_l_align": _auroc(scores["l_align"], labels_2014),
                   "auroc_2014_recon_lambda0": _auroc(baseline["recon_scores"], labels_2014),
                   "faults_2014": int(labels_2014.sum()), "seconds": time.perf_counter() - start}
            rows.append(row)
            pooled.setdefault((mode, lam, steps), []).append((scores["l_align"], baseline["recon_scores"], labels_2014))
            print(f"{turbine} {mode:5s} lambda {lam:<5g} {steps} steps  spread {row['spread']:.2f} (healthy "
                  f"{row['healthy_spread']:.2f}, prior samples {samples['prior_samples_spread']:.2f})  knn_nll "
                  f"{row['knn_nll']:.3f} (healthy {row['healthy_knn_nll']:.3f}; target's own {reference:.3f}, prior "
                  f"samples {samples['prior_samples_knn_nll']:.3f})  median recon "
                  f"x{row['recon_median_vs_lambda0']:.2f} of lambda 0's  "
                  f"AUROC 2014 L_align {row['auroc_2014_l_align']} (lambda-0 recon "
                  f"{row['auroc_2014_recon_lambda0']})  {row['seconds']:.0f} s", flush=True)
    fleet = {}
    for (mode, lam, steps), parts in pooled.items():
        labels = np.concatenate([p[2] for p in parts])
        name = f"{mode} {lam:g} ({steps} steps)"
        fleet[name] = {"l_align": _auroc(np.concatenate([p[0] for p in parts]), labels),
                       "recon_lambda0": _auroc(np.concatenate([p[1] for p in parts]), labels),
                       "faults": int(labels.sum()), "rows": len(labels)}
        print(f"2014 rows of all turbines, {name}: AUROC L_align {fleet[name]['l_align']} (lambda-0 reconstruction "
              f"{fleet[name]['recon_lambda0']}, {int(labels.sum())} faults in {len(labels)} rows)", flush=True)

    shown = {turbine: [k for k in latents if k[0] == turbine and k[2] > 0] for turbine in args.turbines}
    columns = max(len(keys) for keys in shown.values())
    fig, axes = plt.subplots(len(args.turbines), columns, figsize=(3.6 * columns, 3.4 * len(args.turbines)),
                             squeeze=False)
    for i, turbine in enumerate(args.turbines):
        for j, key in enumerate(shown[turbine]):
            (_, mode, lam, _), ax, y = key, axes[i][j], latents[key]
            ax.scatter(own[:, 0], own[:, 1], s=1, c="0.75", label="prior samples")
            ax.scatter(y[:, 0], y[:, 1], s=1, c="crimson" if mode == "align" else "tab:blue", alpha=0.5,
                       label="latents")
            ax.set_title(f"{turbine}: {mode}, lambda {lam:g}", fontsize=9)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "alignment_modes.png", dpi=80)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "settings": {**CORE, "core_steps": args.core_steps, "match_steps": args.match_steps}, "runs": rows,
              "auroc_2014_all": fleet, "seconds": time.perf_counter() - started}
    (args.out / "alignment_modes.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'alignment_modes.json'} and alignment_modes.png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
