"""Fleet-scale ingest: the core prior fit streaming through Ray Data vs the in-memory path, side by side.

    python benchmarks/ingest_scale.py [--sizes 1e6,10e6,30e6] [--baseline-sizes 1e6,10e6] [--refit-sizes 10e6]
                                      [--steps 300]

Synthetic features, 32 float32 columns, 1 M rows per Parquet file, on a SeaweedFS S3 server this
script starts on 127.0.0.1 (as the tests do). For each size, one fit per path, each in its own
process (so each process's peak memory is its own):

* ``streaming``: ``fit_core_prior`` as shipped: a validating pass of Ray tasks while Ray Train starts, the
  map to prior space from streamed moments, Ray Data shards to the Train workers;
* ``refit``: the same fit again into the same store (another run name), as a platform team refits the same
  files with other settings: the validating pass finds each file's statistics kept by the first
  (``pipeline.jobs.validated_files``) and reads no rows;
* ``in-memory`` (the path before 2026-11, rebuilt here): the driver reads every row
  (``read_features``), fits the map on them, ``ray.put``s each worker's shard, and the workers
  draw batches from their in-memory shard with the same ``train_loop``.

Both: local Ray with 2 CPUs for training + 1 for reading, 1 worker x 2 CPUs, global batch 4096,
width 256 x depth 4, ``--steps`` steps. Reported: the driver's peak RSS above an idle driver (the
same process after importing torch and Ray and connecting, before any data work), each worker's
peak RSS, seconds from the job's start to its first training step (and, streamed, where they went: the
record's start-up timeline), training samples/s (the median of the workers' measurements between reports,
after the first) and the share of that time the worker waited for its next batch (``data_wait``, same
median); the streamed runs also keep the iterator breakdown Ray Data's statistics give at the end of the
fit. Results go to ``benchmarks/results/ingest_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS, ROWS_PER_FILE = 32, 1_000_000
COMMON = dict(width=256, depth=4, workers=1, cpus_per_worker=2, latent_dim=16, projection="pca", report_every=50)


def write_features(uri: str, rows: int, tmp: Path) -> None:
    """``rows`` rows of 32 correlated float32 columns in files of 1 M rows, uploaded to ``uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.storage import Store

    store, rng = Store.open(uri), np.random.default_rng(0)
    mixing = rng.normal(size=(COLUMNS, COLUMNS)).astype(np.float32)
    for k in range(math.ceil(rows / ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - k * ROWS_PER_FILE)
        x = rng.standard_normal((n, COLUMNS), dtype=np.float32) @ mixing
        path = tmp / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({f"f{j:02d}": x[:, j] for j in range(COLUMNS)}), path, row_group_size=250_000)
        store.put_file(path.name, path)
        path.unlink()


def in_memory_worker(config: dict) -> None:
    """The pre-2026-11 worker: its shard from the object store, uniform batches from memory."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from pipeline.jobs.prior_fit_worker import timed_first
    from pipeline.method.configs import FitConfig, VelocityConfig
    from pipeline.method.training import EMA, make_optimiser, random_batches, train_loop
    from pipeline.method.velocity import VelocityMLP

    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(config["threads"])
    z = torch.from_numpy(np.array(ray.get(config["shards"][rank])))  # (n_rank, d)
    fit = FitConfig(**config["fit"])
    torch.manual_seed(0)
    model = VelocityMLP(VelocityConfig(**config["velocity"]))
    ema, optimiser = EMA(model, fit.ema_decay), make_optimiser(model, fit)
    model = ray.train.torch.prepare_model(model)
    generator = torch.Generator().manual_seed(rank)
    first: list[float] = []
    history: list[dict] = []

    def report(metrics: dict) -> None:
        import resource

        history.append({**metrics, "first_step_unix": first[0],
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        Path(config["out"]).write_text(json.dumps(history))  # Train V2 keeps no metrics history: a file on this host
        ray.train.report(metrics)

    batches = timed_first(random_batches(z, config["batch"], generator), first)
    train_loop(model, optimiser, ema, batches, fit, report, every=config["report_every"], generator=generator)


def run_one(path: str, uri: str, steps: int, store: str) -> dict:
    """One fit in this process; returns what it measured."""
    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.jobs import runtime
    from pipeline.jobs.prior_fit import fit_core_prior
    from pipeline.jobs.prior_fit_spec import PriorFitSpec
    from pipeline.method.configs import FitConfig
    from pipeline.method.prior_space import PriorSpace
    from pipeline.registry import Registry
    from pipeline.sites.models import load_prior
    from pipeline.storage import Store

    runtime.connect(num_cpus=2)
    idle = runtime.peak_rss_mib()
    fit = FitConfig(steps=steps, batch_size=4096, warmup=20, log_every=50)
    started = time.time()
    if path in ("streaming", "refit"):
        lines: list[str] = []
        record = fit_core_prior(PriorFitSpec(features=uri, fit=fit, **COMMON), Store.open(store), say=lines.append)
        ingest, history = record.config["ingest"], load_prior(Registry(Store.open(store)), record.id).info["history"]
        return {"driver_peak_rss_mib": runtime.peak_rss_mib() - idle, "idle_driver_mib": idle,
                "worker_peak_rss_mib": [s.get("peak_rss_mib") for s in ingest["shards"]] or None,
                "seconds_to_first_step": ingest["seconds_to_first_step"], "timeline": ingest["timeline"],
                "seconds_validating": ingest["seconds_validating"],
                "files_validated_before": ingest["files_validated_before"],
                "samples_per_s": statistics.median(h["samples_per_s"] for h in history[1:]),
                "data_wait": statistics.median(h["data_wait"] for h in history[1:]),
                "ray_data": [line.split("Ray Data: ", 1)[1] for line in lines if "Ray Data: " in line],
                "seconds": time.time() - started, "rows": ingest["train_rows"] + ingest["heldout_rows"]}
    from pipeline.data import read_features

    features = read_features(uri)
    x = torch.from_numpy(features.values)
    z = PriorSpace.fit(x, COMMON["latent_dim"], COMMON["projection"]).apply(x).numpy()  # (n, d1)
    del x, features
    out = tempfile.mktemp(suffix=".json")
    from pipeline.method.configs import VelocityConfig

    trainer = TorchTrainer(
        in_memory_worker, train_loop_config={
            "shards": [ray.put(z)], "threads": 2, "out": out, "fit": fit.to_dict(), "batch": 4096, "report_every": 50,
            "velocity": VelocityConfig(dim=COMMON["latent_dim"], width=COMMON["width"],
                                       depth=COMMON["depth"]).to_dict()},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
        run_config=RunConfig(name=f"in-memory-{uuid.uuid4().hex[:6]}", storage_path=tempfile.mkdtemp()))
    trainer.fit()
    history = json.loads(Path(out).read_text())
    return {"driver_peak_rss_mib": runtime.peak_rss_mib() - idle, "idle_driver_mib": idle,
            "worker_peak_rss_mib": [history[-1]["peak_rss_mib"]],
            "seconds_to_first_step": history[-1]["first_step_unix"] - started,
            "samples_per_s": statistics.median(h["samples_per_s"] for h in history[1:]),
            "seconds": time.time() - started, "rows": len(z)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,10e6,30e6", help="rows, comma-separated")
    parser.add_argument("--baseline-sizes", default="1e6,10e6", help="sizes also run on the in-memory path")
    parser.add_argument("--refit-sizes", default="10e6", help="sizes also refitted into the same store")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ingest_scale.json"))
    parser.add_argument("--run", nargs=4, metavar=("PATH", "URI", "STEPS", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print("RESULT " + json.dumps(run_one(args.run[0], args.run[1], int(args.run[2]), args.run[3])))
        return

    from tests.support.s3server import SeaweedServer

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    baseline = {int(float(s)) for s in args.baseline_sizes.split(",") if s}
    refit = {int(float(s)) for s in args.refit_sizes.split(",") if s}
    results = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version()}, "steps": args.steps, "runs": []}
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        server = SeaweedServer(Path(tmp) / "s3").start()
        try:
            bucket = "ingest-bench"
            os.environ.update(server.env)
            server.make_bucket(bucket)
            env = {**os.environ, "BENCH_BUCKET": bucket}
            for rows in sizes:
                uri = f"s3://{bucket}/features-{rows}"
                start = time.time()
                write_features(uri, rows, Path(tmp))
                print(f"[bench] wrote {rows:,} rows ({rows * COLUMNS * 4 / 2**30:.2f} GiB) in "
                      f"{time.time() - start:.0f} s", flush=True)
                store = f"s3://{bucket}/store-{uuid.uuid4().hex[:8]}"  # the streamed fit's, and its refit's
                for path in ["streaming", *(["refit"] if rows in refit else []),
                             *(["in-memory"] if rows in baseline else [])]:
                    command = [sys.executable, __file__, "--run", path, uri, str(args.steps), store]
                    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
                    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                    if out.returncode != 0 or not lines:
                        print(out.stdout[-3000:], out.stderr[-5000:])
                        raise SystemExit(f"{path} at {rows:,} rows failed")
                    run = {"path": path, "rows": rows, **json.loads(lines[-1][7:])}
                    results["runs"].append(run)
                    print("[bench] " + json.dumps(run), flush=True)
        finally:
            server.stop()
    by = {(r["path"], r["rows"]): r for r in results["runs"]}
    print(f"\n{'rows':>11} {'path':>10} {'driver +MiB':>12} {'worker MiB':>11} {'first step s':>13} "
          f"{'checking s':>11} {'samples/s':>10} {'data wait':>10}")
    for r in results["runs"]:
        print(f"{r['rows']:>11,} {r['path']:>10} {r['driver_peak_rss_mib']:>12,.0f} "
              f"{max(r['worker_peak_rss_mib'] or [math.nan]):>11,.0f} {r['seconds_to_first_step']:>13.1f} "
              f"{r.get('seconds_validating', math.nan):>11.1f} {r['samples_per_s']:>10,.0f} "
              f"{r.get('data_wait', math.nan):>10.1%}")
    streamed = {r["rows"]: r["samples_per_s"] for r in results["runs"] if r["path"] == "streaming"}
    base = 10_000_000 if 10_000_000 in streamed else min(streamed)  # the yardstick: the 10 M rate
    for rows in sorted(set(streamed) - {base}):
        results[f"streaming_rate_ratio_{rows}"] = ratio = streamed[rows] / streamed[base]
        print(f"streaming samples/s at {rows:,} rows / at {base:,} rows: {ratio:.2f}")
    for rows in sorted(baseline & set(sizes)):
        ratio = by[("streaming", rows)]["samples_per_s"] / by[("in-memory", rows)]["samples_per_s"]
        results[f"samples_per_s_ratio_{rows}"] = ratio
        print(f"streaming / in-memory samples/s at {rows:,} rows: {ratio:.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
