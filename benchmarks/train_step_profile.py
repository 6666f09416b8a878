"""Where a CPU training step of the core prior goes, and how close it gets to the matmul peak.

    python benchmarks/train_step_profile.py [--width 1024 --depth 6 --dim 32 --batch 256] [--rounds 5] [--t-group 32]

One process, all cores' threads. Each round measures, side by side (median of ``--repeats`` calls
each): the float32 matmul peak (2048^3 products), the whole
:func:`~pipeline.method.training.train_step` with the optimiser flowprior uses (fused AdamW) and with
PyTorch's default AdamW (per-tensor loop on a CPU, what flowprior used before), and the step's parts:
forward + backward, grad-norm clipping, optimiser step, EMA update.
FLOPs per step are counted by ``torch.utils.flop_counter``; the fraction of peak of each round is its
achieved FLOP/s over that round's peak, and the table reports the median over rounds (this machine's
speed drifts between runs; ratios within a round do not). Also the step with ``--t-group`` samples
sharing each (stratified) t: fewer FLOPs, so compare its speed, not its fraction of peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.losses import flow_matching_loss
from pipeline.method.training import EMA, make_optimiser, train_step
from pipeline.method.velocity import VelocityMLP

from machine import cpu_name  # benchmarks/machine.py, beside this script


def timed(fn, repeats: int) -> float:
    """Median seconds per call over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--t-group", type=int, default=32, help="samples sharing one t in the shared-time step")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (the median counts)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_step_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    fit = FitConfig(steps=10_000, warmup=10, batch_size=args.batch)
    model = VelocityMLP(VelocityConfig(dim=args.dim, width=args.width, depth=args.depth))
    ema, fused = EMA(model, fit.ema_decay), make_optimiser(model, fit)
    grouped = FitConfig(steps=10_000, warmup=10, batch_size=args.batch, t_group=args.t_group)
    default = torch.optim.AdamW(model.parameters(), lr=fit.lr, betas=(fit.beta1, fit.beta2),
                                weight_decay=fit.weight_decay)  # PyTorch's default implementation on a CPU
    generator = torch.Generator().manual_seed(0)
    x_1 = torch.randn(args.batch, args.dim, generator=generator)
    with FlopCounterMode(display=False) as counter:
        train_step(model, fused, ema, x_1, 0, fit, generator)
    flops = counter.get_total_flops()
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)

    def forward_backward() -> None:
        loss = flow_matching_loss(model, x_1, generator=generator).mean()
        fused.zero_grad(set_to_none=True)
        loss.backward()

    parts = {
        "peak": lambda: a @ b,
        "step (fused AdamW)": lambda: train_step(model, fused, ema, x_1, 100, fit, generator),
        "step (default AdamW)": lambda: train_step(model, default, ema, x_1, 100, fit, generator),
        f"step (t_group {args.t_group})": lambda: train_step(model, fused, ema, x_1, 100, grouped, generator),
        "forward + backward": forward_backward,
        "clip grad norm": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), fit.grad_clip),
        "fused AdamW step": fused.step,
        "default AdamW step": default.step,
        "EMA update": lambda: ema.update(model, 100),
    }
    rounds: list[dict] = []
    for r in range(args.rounds):
        seconds = {name: timed(fn, args.repeats) for name, fn in parts.items()}
        peak = 2 * n**3 / seconds["peak"]
        rounds.append({"seconds": seconds, "peak_flop_per_s": peak,
                       "fraction_fused": flops / seconds["step (fused AdamW)"] / peak,
                       "fraction_default": flops / seconds["step (default AdamW)"] / peak})
        print(f"round {r + 1}: peak {peak / 1e9:.0f} GFLOP/s, step {seconds['step (fused AdamW)'] * 1e3:.0f} ms = "
              f"{rounds[-1]['fraction_fused']:.0%} of peak (default AdamW: {rounds[-1]['fraction_default']:.0%})",
              flush=True)
    median = {name: statistics.median(r["seconds"][name] for r in rounds) for name in parts}
    step = median["step (fused AdamW)"]
    print(f"\nmodel {args.width} x {args.depth}, d = {args.dim}, batch {args.batch}: {flops / 1e9:.1f} GFLOP per step, "
          f"{torch.get_num_threads()} threads; medians over {args.rounds} rounds")
    print(f"{'':24} {'ms':>8} {'of step':>8}")
    for name in parts:
        if name != "peak":
            print(f"{name:24} {median[name] * 1e3:8.1f} {median[name] / step:8.0%}")
    fraction = statistics.median(r["fraction_fused"] for r in rounds)
    before = statistics.median(r["fraction_default"] for r in rounds)
    print(f"\ntraining step: {fraction:.0%} of the measured float32 matmul peak (default AdamW: {before:.0%}); "
          f"fused / default step speed {median['step (default AdamW)'] / step:.2f}x; "
          f"t_group {args.t_group} / one t per sample {step / median[f'step (t_group {args.t_group})']:.2f}x")
    cpu = cpu_name()
    Path(args.json).write_text(json.dumps({
        "settings": vars(args), "flops_per_step": flops, "rounds": rounds, "median_seconds": median,
        "fraction_of_peak": fraction, "fraction_of_peak_default_adamw": before,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
