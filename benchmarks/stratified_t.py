"""Shared stratified times (``--t-group K``) against one t per sample, at equal wall time.

    python benchmarks/stratified_t.py [--width 256 --depth 4] [--groups 1 8 32] [--seconds 60] [--seeds 0 1]

With one t per sample the time MLP and the AdaLN modulations (60% of a block's FLOPs) run once per
sample; with ``t_group = K`` they run once per K samples, and the K samples' shared times are
stratified over [0, 1] (``pipeline.method.losses.flow_matching_loss``). For each seed and group size,
interleaved: measure the step time, give each run the steps that fit ``--seconds`` (so every run
gets the same wall-clock budget and a full learning-rate schedule), train the same model on the same
data (a 16-D mixture of 8 Gaussians, in memory, ``fit_velocity``), and score the EMA model's held-out
FM loss with one t per sample (the standard ``L_FM``, fixed noise, 8 draws per point).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.metrics import heldout_fm
from pipeline.method.training import fit_velocity, new_training, train_step

BATCH = 256


def mixture(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=torch.Generator().manual_seed(123)) * 2  # fixed across seeds
    return centres[torch.randint(0, 8, (n,), generator=g)] + 0.4 * torch.randn(n, dim, generator=g)


def step_seconds(velocity: VelocityConfig, k: int, z: torch.Tensor) -> float:
    fit = FitConfig(steps=1000, warmup=10, batch_size=BATCH, t_group=k)
    model, ema, optimiser = new_training(velocity, fit, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        train_step(model, optimiser, ema, z[:BATCH], i, fit, generator)
    start = time.perf_counter()
    for i in range(20):
        train_step(model, optimiser, ema, z[i * BATCH:(i + 1) * BATCH], i, fit, generator)
    return (time.perf_counter() - start) / 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "stratified_t.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    velocity = VelocityConfig(dim=args.dim, width=args.width, depth=args.depth)
    z_train, z_heldout = mixture(200_000, args.dim, 0), mixture(5_000, args.dim, 1)
    runs = []
    for seed in args.seeds:
        for k in args.groups:
            per_step = step_seconds(velocity, k, z_train)
            steps = max(50, int(args.seconds / per_step))
            fit = FitConfig(steps=steps, warmup=min(200, steps // 10), batch_size=BATCH, t_group=k, log_every=steps)
            model, _, _ = new_training(velocity, fit, "cpu", seed=seed)
            start = time.perf_counter()
            ema, _ = fit_velocity(model, z_train, fit, seed=seed)
            wall = time.perf_counter() - start
            runs.append({"seed": seed, "t_group": k, "steps": steps, "wall_seconds": wall,
                         "samples_per_s": steps * BATCH / wall,
                         "heldout_fm": heldout_fm(ema, z_heldout, seed=7, draws=8)})
            print(f"seed {seed}  t_group {k:3d}: {steps:5d} steps in {wall:5.1f} s ({runs[-1]['samples_per_s']:,.0f} "
                  f"samples/s), held-out FM {runs[-1]['heldout_fm']:.4f}", flush=True)
    summary = {}
    for k in args.groups:
        mine = [r for r in runs if r["t_group"] == k]
        summary[k] = {"heldout_fm": statistics.mean(r["heldout_fm"] for r in mine),
                      "samples_per_s": statistics.mean(r["samples_per_s"] for r in mine)}
    base = summary[args.groups[0]]
    print(f"\nmodel {args.width} x {args.depth}, d = {args.dim}, batch {BATCH}, {args.seconds:g} s per run, "
          f"seeds {args.seeds}")
    print(f"{'t_group':>8} {'samples/s':>10} {'speed':>6} {'held-out FM':>12} {'vs K=1':>7}")
    for k, row in summary.items():
        print(f"{k:8d} {row['samples_per_s']:10,.0f} {row['samples_per_s'] / base['samples_per_s']:6.2f} "
              f"{row['heldout_fm']:12.4f} {row['heldout_fm'] / base['heldout_fm']:7.3f}")
    Path(args.json).write_text(json.dumps({"settings": vars(args), "runs": runs, "summary": summary}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
