"""Distribution matching against priors of increasing quality on the wind farm: how close can the
latents' kNN NLL proxy come to the target's own, and what limits it?

    python benchmarks/matching_prior_quality.py [--threads 2] [--turbines R80711 ...]

On the bundled La Haute Borne data, in one process (the method library, no Ray), one run:

1. fit two core priors on the healthy 2014 rows of all four turbines: the demo's (128 x 3, 2,000
   steps) and a larger one (256 x 4, 6,000 steps);
2. for each turbine, score against its target points (healthy 2015 rows in prior space; the kNN NLL
   proxy of ``benchmarks/alignment_modes.py``): the target's own held-out rows, real data that a
   perfect prior of each kind would generate (the pooled held-out 2014 rows of all turbines: a perfect
   core; the turbine's own 2014 rows), and samples of each core and of a site prior fine-tuned from
   the larger core on the turbine's target (``--finetune-steps``);
3. align the turbine's encoder with ``match`` (lambda ``--lam``, ``--steps``) to that site prior and
   measure, on 2,000 held-out healthy rows, the latents' kNN NLL proxy and spread, and the median
   reconstruction error against a lambda = 0 run of as many steps.

Writes ``benchmarks/results/matching_prior_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.data import read_features
from pipeline.data.split import split_indices
from pipeline.datasets import la_haute_borne as lhb
from pipeline.demo.settings import DemoSettings
from pipeline.method.configs import FitConfig
from pipeline.method.encoder import train_encoder
from pipeline.method.metrics import knn_nll, spread_ratio
from pipeline.method.prior import FlowPrior
from pipeline.sites import load_site_spec
from pipeline.sites.align import METRIC_POINTS, alignment_data
from pipeline.sites.site_prior import site_fit_config, train_site_prior

DEMO = DemoSettings()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turbines", nargs="+", default=list(lhb.TURBINES))
    parser.add_argument("--finetune-steps", type=int, default=8000, help="site prior steps from the larger core")
    parser.add_argument("--lam", type=float, default=0.1, help="match's lambda")
    parser.add_argument("--steps", type=int, default=4000, help="encoder steps (match and lambda = 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pool = read_features(str(lhb.PARQUET), columns=lhb.FEATURES, filters={"year": 2014, "fault": False},
                         drop_nonfinite=True).values
    train, heldout = split_indices(pool, 0.1, seed=0)
    space = {"latent_dim": DEMO.latent_dim, "projection": "pca", "normaliser": "per-dim", "seed": 0}
    cores = {"demo core (128x3, 2,000 steps)": FlowPrior.fit(pool[train], width=DEMO.width, depth=DEMO.depth,
                                                             fit=FitConfig(steps=DEMO.core_steps), **space),
             "larger core (256x4, 6,000 steps)": FlowPrior.fit(pool[train], width=256, depth=4,
                                                               fit=FitConfig(steps=6000), **space)}
    larger = cores["larger core (256x4, 6,000 steps)"]
    print(f"cores fitted ({time.perf_counter() - started:.0f} s)", flush=True)
    pool_sample = pool[heldout][torch.randperm(len(heldout), generator=torch.Generator().manual_seed(0))[:2000].numpy()]
    draw = lambda prior: prior.sample(2000, generator=torch.Generator().manual_seed(0))  # noqa: E731
    rows = []
    for turbine in args.turbines:
        spec = load_site_spec(DEMO.sites / f"{turbine}.yaml")
        observations, z_target, reference = alignment_data(spec, larger)
        target = spec.target.read().values
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(spec.seed)).numpy()
        healthy = torch.from_numpy(target[order[METRIC_POINTS:METRIC_POINTS + 2000]])  # held out from z_target
        own_2014 = read_features(str(lhb.PARQUET), columns=lhb.FEATURES, drop_nonfinite=True,
                                 filters={"site": turbine, "year": 2014, "fault": False}).values
        nll = lambda y, z=z_target: knn_nll(y, z).mean().item()  # noqa: E731
        row = {"site": turbine, "target_knn_nll": reference,
               "pool_2014_rows": nll(larger.to_prior(pool_sample)),
               "own_2014_rows": nll(larger.to_prior(own_2014[:: max(1, len(own_2014) // 2000)]))}
        row |= {f"samples: {name}": nll(draw(core)) for name, core in cores.items()}
        split_train, split_heldout = split_indices(target, spec.finetune.heldout_fraction, spec.seed)
        fit = site_fit_config(larger, "finetune", args.finetune_steps, spec.finetune.lr, spec.finetune.batch_size,
                              args.finetune_steps)
        site_prior = train_site_prior(larger, larger.to_prior(target[split_train]),
                                      larger.to_prior(target[split_heldout]), "finetune", fit, seed=spec.seed)
        row["samples: site prior"] = nll(draw(site_prior))
        runs = {}
        for lam, mode in ((0.0, "align"), (args.lam, "match")):
            start = time.perf_counter()
            runs[mode] = train_encoder(observations.values, site_prior,
                                       replace(spec.alignment, lam=lam, mode=mode, steps=args.steps), z_target,
                                       spec.encoder.layout(), seed=spec.seed)
            print(f"{turbine} {mode} lambda {lam:g}: {time.perf_counter() - start:.0f} s", flush=True)
        with torch.no_grad():
            y = runs["match"].model.encode(healthy)
        row |= {"match_healthy_knn_nll": nll(y), "match_healthy_spread": spread_ratio(y, z_target),
                "match_recon_median_vs_lambda0": runs["match"].metrics["recon_median"]
                / runs["align"].metrics["recon_median"]}
        rows.append(row)
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "settings": vars(args) | {"out": str(args.out)}, "rows": rows, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matching_prior_quality.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'matching_prior_quality.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
