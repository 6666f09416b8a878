"""Cost of one gradient step on latents: L_align (K draws), distribution matching, and likelihood training.

    python benchmarks/align_vs_likelihood.py [--dims 2 32] [--width 512] [--threads 1] [--json out.json]

For each latent dim ``d`` it times, side by side in one run and on the same untrained-but-
randomised velocity MLP (AdaLN, ``width`` x ``depth``), one Adam step on a batch of latents:

* ``align``: ``mean L_align(y)`` with K = 4 noise draws (one forward/backward of the prior);
* ``match``: distribution matching with K = 4 draws: the auxiliary flow's ``aux_steps`` flow-matching
  steps on the batch, then one forward of the prior and of the auxiliary flow (no backward through them);
* ``nll-exact``: ``-mean log p(y)`` through a 20-step Euler solve with the exact divergence
  (``d`` extra backward passes per step, all kept for the outer gradient);
* ``nll-hutchinson``: the same with one Rademacher probe (one extra backward per step).

It prints seconds per step (best of ``--repeats``) and the ratios to ``align``, with the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pipeline.method.configs import MatchConfig, VelocityConfig
from pipeline.method.likelihood import log_likelihood
from pipeline.method.losses import alignment_loss
from pipeline.method.matching import AuxiliaryFlow, matching_loss
from pipeline.method.ode import Solver
from pipeline.method.velocity import VelocityMLP

from machine import cpu_name  # benchmarks/machine.py, beside this script


def machine() -> dict:
    return {"cpu": cpu_name(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def timed_step(loss_fn, y: torch.Tensor, repeats: int) -> float:
    """Best wall-clock seconds of one Adam step on ``y`` (after one warm-up step)."""
    optimiser = torch.optim.Adam([y], lr=1e-2)
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = loss_fn(y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if i:  # the first step warms up allocations
            best = min(best, time.perf_counter() - start)
    return best


def bench(dim: int, width: int, depth: int, batch: int, draws: int, ode_steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = VelocityMLP(VelocityConfig(dim=dim, width=width, depth=depth))
    for p in net.parameters():  # a generic non-zero field (the zero-initialised output would be trivial)
        torch.nn.init.normal_(p, std=0.02)
    net.requires_grad_(False)
    solver = Solver("euler", steps=ode_steps)
    generator = torch.Generator().manual_seed(0)
    aux = AuxiliaryFlow(net, MatchConfig())

    def match(y: torch.Tensor) -> torch.Tensor:
        aux.fit(y, generator=generator)
        return matching_loss(net, aux.velocity, y, draws=draws, generator=generator).mean()

    losses = {
        "align": lambda y: alignment_loss(net, y, draws=draws, generator=generator).mean(),
        "match": match,
        "nll-exact": lambda y: -log_likelihood(net, y, "exact", solver).mean(),
        "nll-hutchinson": lambda y: -log_likelihood(net, y, "hutchinson", solver, generator).mean(),
    }
    seconds = {}
    for name, fn in losses.items():
        y = torch.randn(batch, dim).requires_grad_(True)
        seconds[name] = timed_step(fn, y, repeats)
        print(f"  d={dim:<3} {name:<15} {seconds[name]:8.3f} s/step", flush=True)
    return {"dim": dim, "seconds": seconds,
            "ratio_to_align": {k: v / seconds["align"] for k, v in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--ode-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    print(f"velocity MLP {args.width} x {args.depth}, batch {args.batch}, K = {args.draws}, "
          f"{args.ode_steps}-step Euler ODE")
    rows = [bench(d, args.width, args.depth, args.batch, args.draws, args.ode_steps, args.repeats) for d in args.dims]
    print()
    print(f"{'d':>4} {'align s':>9} {'match s':>9} {'exact s':>9} {'hutch s':>9} {'match/align':>12} "
          f"{'exact/match':>12} {'exact/align':>12} {'hutch/align':>12}")
    for r in rows:
        s, q = r["seconds"], r["ratio_to_align"]
        print(f"{r['dim']:>4} {s['align']:9.3f} {s['match']:9.3f} {s['nll-exact']:9.3f} {s['nll-hutchinson']:9.3f} "
              f"{q['match']:11.2f}x {s['nll-exact'] / s['match']:11.1f}x {q['nll-exact']:11.1f}x "
              f"{q['nll-hutchinson']:11.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
