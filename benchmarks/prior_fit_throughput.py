"""Prior-fitting throughput: a bare PyTorch loop vs the Ray Train job at 1 and 2 workers, side by side.

    python benchmarks/prior_fit_throughput.py [--width 1024 --depth 6] [--dim 32] [--steps 60] [--json out.json]

Same model (paper width by default), same data, same global batch (256), in one Ray session:

* ``bare``: one process (the driver), ``train_step`` in a loop (fused AdamW, clipping, EMA), all cores' threads;
* ``ray task``: the bare loop inside a plain Ray task (separates Ray's worker process from
  Ray Train's control plane);
* ``ray 1 worker``: ``fit_core_prior`` with 1 worker holding all cores (``cpus_per_worker``);
* ``ray 2 workers``: 2 DDP workers with half the cores each, each on half the batch;
* ``bare, 1 thread`` and ``ray 1 worker x 1 CPU``: the same pair on one core, leaving the others to Ray's
  control plane (its controller, actors, raylet, GCS: a dozen processes that each wake every 10 ms). On a
  machine with few cores, a worker holding every core shares them with that control plane, and its threads'
  lock-step pays for each preemption; this pair shows what the worker costs per step without that sharing.

All but the 2 workers run ``--rounds`` times, interleaved (bare, task, 1 worker, bare, ...): on a shared VM the
same loop's rate drifts by +-10% from one 10-s window to the next, so one run of each is not a comparison.
Each rate is the median over that run's report windows (``--report-every`` steps; for Ray the windows after
the first, which includes warm-up), and each ratio is the median over rounds of the ratio within a round.

* ``all-reduce``: what DDP adds per step with 2 workers, measured alone: two gloo processes (1 thread each)
  all-reducing one float32 tensor of the model's parameter count, as DDP does with the gradients;
* ``--large-batch``: Ray Train with 1 and 2 workers again at a larger global batch (fewer steps), where the
  same all-reduce is a smaller share of a longer step.

Ray's samples/s is training only (held-out evaluation and checkpointing show in the job's wall time). It
also measures the achieved FLOP/s of the training step (FLOPs counted by ``torch.utils.flop_counter`` on one
step) against the matmul peak measured in the same run (best of 2048^3 float32 matmuls), and prints the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.jobs.prior_fit import fit_core_prior
from pipeline.jobs.prior_fit_spec import PriorFitSpec
from pipeline.jobs.runtime import INGEST_CPUS
from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.training import EMA, make_optimiser, train_step
from pipeline.method.velocity import VelocityMLP
from pipeline.registry import Registry
from pipeline.sites.models import load_prior
from pipeline.storage import Store

from machine import cpu_name  # benchmarks/machine.py, beside this script

BATCH = 256


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_loop(z: torch.Tensor, velocity: VelocityConfig, fit: FitConfig, threads: int, every: int) -> dict:
    """The training step in a plain loop: samples/s is the median over windows of ``every`` steps (as Ray's
    reports), after 4 warm-up steps; ``windows`` holds each window's rate."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VelocityMLP(velocity)
    ema, optimiser = EMA(model, fit.ema_decay), make_optimiser(model, fit)
    generator = torch.Generator().manual_seed(0)
    batch = lambda: z[torch.randint(0, len(z), (BATCH,), generator=generator)]  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimiser, ema, batch(), 0, fit, generator)
    flops = counter.get_total_flops()
    for step in range(1, 4):  # warm-up
        train_step(model, optimiser, ema, batch(), step, fit, generator)
    windows = []
    for first in range(4, fit.steps - every + 1, every):
        start = time.perf_counter()
        for step in range(first, first + every):
            train_step(model, optimiser, ema, batch(), step, fit, generator).item()
        windows.append(every * BATCH / (time.perf_counter() - start))
    rate = statistics.median(windows)
    return {"samples_per_s": rate, "step_seconds": BATCH / rate, "flops_per_step": flops, "windows": windows}


def _all_reduce(rank: int, numel: int, port: int, out) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    flat = torch.ones(numel)
    for _ in range(2):
        dist.all_reduce(flat)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def all_reduce_seconds(numel: int) -> float:
    """Median seconds of one gloo all-reduce of ``numel`` float32 between two local processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    ranks = [context.Process(target=_all_reduce, args=(rank, numel, port, out)) for rank in range(2)]
    for process in ranks:
        process.start()
    seconds = out.get(timeout=300)
    for process in ranks:
        process.join()
    return seconds


def ray_job(data: Path, store: Path, workers: int, cpus: int, args, fit: FitConfig, run: int = 0) -> dict:
    spec = PriorFitSpec(features=str(data), width=args.width, depth=args.depth, fit=fit, workers=workers,
                        cpus_per_worker=cpus, report_every=args.report_every, eval_samples=64,
                        heldout_fraction=0.02, name=f"bench-{workers}x{cpus}-{fit.batch_size}-{run}", max_failures=0)
    start = time.perf_counter()
    record = fit_core_prior(spec, Store.open(str(store)), say=lambda line: None)
    wall = time.perf_counter() - start
    history = load_prior(Registry(Store.open(str(store))), record.id).info["history"]
    rates = [h["samples_per_s"] for h in history[1:]]  # the first report includes warm-up
    return {"samples_per_s": statistics.median(rates), "wall_seconds": wall,
            "train_seconds": history[-1]["seconds"], "reports": len(history), "windows": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--report-every", type=int, default=25)
    parser.add_argument("--large-batch", type=int, default=2048, help="global batch of the second 1-vs-2-worker pair")
    parser.add_argument("--large-steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs of the bare loop, Ray task, Ray Train 1 worker and the one-core pair")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "prior_fit_throughput.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    fit = FitConfig(steps=args.steps, warmup=5, batch_size=BATCH)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20_000, args.dim)) + rng.choice([-2.0, 2.0], size=(20_000, 1))).astype(np.float32)
    velocity = VelocityConfig(dim=args.dim, width=args.width, depth=args.depth)

    results = {"settings": {**vars(args), "batch": BATCH, "cores": cores}, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "features.parquet"
        pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim)}),
                       data)
        peak = matmul_peak(cores)
        print(f"matmul peak ({cores} threads): {peak / 1e9:.1f} GFLOP/s", flush=True)
        z = torch.from_numpy((x - x.mean()) / x.std())
        import ray

        # the embedded runtime's shape: every core for training plus Ray Data's read slot
        ray.init(num_cpus=cores + INGEST_CPUS, include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=cores)(bare_loop)  # the same loop in a plain Ray worker process
        for run in range(args.rounds):
            one = {"bare": bare_loop(z, velocity, fit, cores, args.report_every),
                   "ray_task": ray.get(task.remote(z, velocity, fit, cores, args.report_every)),
                   "ray_1": ray_job(data, Path(tmp) / "store", 1, cores, args, fit, run),
                   "bare_1_thread": bare_loop(z, velocity, fit, 1, args.report_every),
                   "ray_1_one_cpu": ray_job(data, Path(tmp) / "store", 1, 1, args, fit, run)}
            results["rounds"].append(one)
            print(f"round {run + 1}: " + ", ".join(f"{key} {one[key]['samples_per_s']:.0f}" for key in one) +
                  " samples/s", flush=True)
        results["ray_2"] = ray_job(data, Path(tmp) / "store", 2, max(1, cores // 2), args, fit)
        print(f"ray, 2 workers: {results['ray_2']['samples_per_s']:.0f} samples/s", flush=True)
        large = FitConfig(steps=args.large_steps, warmup=5, batch_size=args.large_batch)
        every = argparse.Namespace(**{**vars(args), "report_every": max(1, args.large_steps // 3)})
        for workers, cpus in ((1, cores), (2, max(1, cores // 2))):
            results[f"ray_{workers}_large"] = ray_job(data, Path(tmp) / "store", workers, cpus, every, large)
            print(f"ray, {workers} worker(s), batch {args.large_batch}: "
                  f"{results[f'ray_{workers}_large']['samples_per_s']:.0f} samples/s", flush=True)
        ray.shutdown()
        parameters = sum(p.numel() for p in VelocityMLP(velocity).parameters())
        results["all_reduce"] = {"parameters": parameters, "seconds": all_reduce_seconds(parameters)}
        print(f"all-reduce of {parameters:,} float32 between 2 processes: "
              f"{results['all_reduce']['seconds'] * 1e3:.0f} ms", flush=True)

    # the median over rounds, and each round's ratio to its bare loop (on as many threads)
    for key, base in (("bare", "bare"), ("ray_task", "bare"), ("ray_1", "bare"), ("bare_1_thread", "bare_1_thread"),
                      ("ray_1_one_cpu", "bare_1_thread")):
        rates = [one[key]["samples_per_s"] for one in results["rounds"]]
        ratios = [one[key]["samples_per_s"] / one[base]["samples_per_s"] for one in results["rounds"]]
        results[key] = {"samples_per_s": statistics.median(rates), "per_round": rates,
                        "vs_bare": statistics.median(ratios), "vs_bare_per_round": ratios}
    bare = results["bare"]
    bare.update(step_seconds=BATCH / bare["samples_per_s"],
                flops_per_step=results["rounds"][0]["bare"]["flops_per_step"])
    achieved = bare["flops_per_step"] / bare["step_seconds"]
    results["flops"] = {"matmul_peak": peak, "train_step": achieved, "fraction_of_peak": achieved / peak,
                        "flops_per_step": bare["flops_per_step"]}
    cpu = cpu_name()
    results["machine"] = {"cpu": cpu, "cores": cores, "torch": torch.__version__, "python": platform.python_version()}
    print(f"\nmodel {args.width} x {args.depth}, d = {args.dim}, global batch {BATCH}, {args.steps} steps")
    print(f"{'':24} {'samples/s':>10} {'vs bare':>8}  (the bare loop on as many threads; "
          f"median of {args.rounds} rounds; per round)")
    for key, label in (("bare", "bare PyTorch loop"), ("ray_task", "same loop in a Ray task"),
                       ("ray_1", "Ray Train, 1 worker"), ("bare_1_thread", "bare loop, 1 thread"),
                       ("ray_1_one_cpu", "Ray Train, 1 x 1 CPU")):
        r = results[key]
        print(f"{label:24} {r['samples_per_s']:10.0f} {r['vs_bare']:8.2f}  " +
              " ".join(f"{rate:.0f} ({ratio:.2f})" for rate, ratio in zip(r["per_round"], r["vs_bare_per_round"],
                                                                                strict=True)))
    windows = [rate for one in results["rounds"] for rate in one["bare"]["windows"]]
    print(f"{'':24} the bare loop's own {len(windows)} windows: {min(windows):.0f} to {max(windows):.0f} samples/s")
    two = results["ray_2"]["samples_per_s"]
    print(f"{'Ray Train, 2 workers':24} {two:10.0f} {two / bare['samples_per_s']:8.2f}  "
          f"(job wall {results['ray_2']['wall_seconds']:.0f} s)")
    for suffix, batch in (("", BATCH), ("_large", args.large_batch)):
        one, two = results[f"ray_1{suffix}"]["samples_per_s"], results[f"ray_2{suffix}"]["samples_per_s"]
        step_two = batch / two
        print(f"global batch {batch}: 2 workers / 1 worker = {two / one:.2f}; the all-reduce alone is "
              f"{results['all_reduce']['seconds'] / step_two:.0%} of a 2-worker step ({step_two * 1e3:.0f} ms)")
    print(f"\ntraining step: {bare['flops_per_step'] / 1e9:.1f} GFLOP, {achieved / 1e9:.1f} GFLOP/s = "
          f"{achieved / peak:.0%} of the measured matmul peak ({peak / 1e9:.1f} GFLOP/s)")
    print(f"machine: {results['machine']}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
