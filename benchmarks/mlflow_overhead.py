"""What MLflow tracking costs: registering with and without the copy, a report's metrics to MLflow beside
TensorBoard, and ``registry mirror``; against a real ``mlflow server`` (SQLite) on 127.0.0.1.

    python benchmarks/mlflow_overhead.py [--records 200] [--mirror 1000] [--json out.json]

1. ``Registry.register`` of ``--records`` small records on a local store, tracking off and on, in
   alternating blocks of 20 (so drift in the machine's speed hits both alike): ms per record, ratio.
2. One report of the prior fit's metrics (the 14 scalars rank 0 writes): to the fit's MLflow run and
   as a TensorBoard event file in a local store, alternating: ms per report, ratio.
3. ``registry mirror`` of ``--mirror`` records into an empty experiment: records/s; and the listing of
   what is there already (``Tracking.mirrored``), which every mirror run starts with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support (the MLflow launcher)

from pipeline.jobs.tensorboard import EventLog  # noqa: E402
from pipeline.registry import Registry  # noqa: E402
from pipeline.storage import Store  # noqa: E402
from pipeline.tracking import URI_ENV, Tracking, tracked_registry  # noqa: E402
from tests.support.mlflow_server import MlflowServer  # noqa: E402

from machine import machine  # benchmarks/machine.py, beside this script  # noqa: E402

REPORT = {"step": 300, "loss": 0.91, "lr": 0.002, "grad_norm": 1.3, "samples_per_s": 41000.0, "seconds": 12.5,
          "resumes": 0, "epoch": 2, "heldout_fm": 0.88, "sliced_w2": 0.12, "mean_error": 0.03, "sd_error": 0.05,
          "ema_heldout_fm": 0.87, "steps_per_s": 24.0}


def register_block(registry: Registry, core: str, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        registry.register("site-check", site=f"plant-{i % 40}", parents=[core],
                          config={"decision": "reuse", "threshold": 0.05},
                          metrics={"probe_gain": 0.01, "fm_ratio": 1.02, "nll_gap": 0.1, "mmd": 0.004})
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--mirror", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "mlflow_overhead.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp) / "mlflow").start()
        try:
            results = run(server, Path(tmp), args)
        finally:
            server.stop()
    results["machine"] = machine()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


def run(server: MlflowServer, tmp: Path, args: argparse.Namespace) -> dict:
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-register"
    registry = tracked_registry(Store.open(str(tmp / "store")))
    core = registry.register("prior").id
    os.environ[URI_ENV] = server.uri
    register_block(registry, core, 5)  # warm: imports, the experiment created
    off, on = [], []
    for _ in range(max(1, args.records // 40)):
        os.environ.pop(URI_ENV, None)
        off.append(register_block(registry, core, 20))
        os.environ[URI_ENV] = server.uri
        on.append(register_block(registry, core, 20))
    os.environ.pop(URI_ENV, None)
    register = {"off_ms": 1000 * statistics.median(off), "on_ms": 1000 * statistics.median(on)}
    print(f"register a record         tracking off {register['off_ms']:7.1f} ms   on {register['on_ms']:7.1f} ms   "
          f"on/off {register['on_ms'] / register['off_ms']:.1f}x")

    tracking = Tracking(server.uri, "bench-report")
    events = EventLog(Store.open(str(tmp / "events")), "tensorboard")
    with tracking.training_run("bench-fit", {"steps": 1000}, {}) as fit:
        mlflow_s, board_s = [], []
        for step in range(60):
            started = time.perf_counter()
            fit.write(step, REPORT)
            mlflow_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            events.write(step, REPORT)
            board_s.append(time.perf_counter() - started)
    report = {"mlflow_ms": 1000 * statistics.median(mlflow_s[10:]),
              "tensorboard_ms": 1000 * statistics.median(board_s[10:])}
    print(f"one report ({len(REPORT)} metrics)  MLflow {report['mlflow_ms']:7.1f} ms   TensorBoard file "
          f"{report['tensorboard_ms']:7.1f} ms   "
          f"MLflow/TensorBoard {report['mlflow_ms'] / report['tensorboard_ms']:.1f}x")

    source = Registry(Store.open(str(tmp / "mirror-store")))
    parent = source.register("prior").id
    records = [source.register("site-check", site=f"plant-{i % 40}", parents=[parent], config={"decision": "reuse"},
                               metrics={"mmd": 0.01, "fm_ratio": 1.02}) for i in range(args.mirror)]
    target = Tracking(server.uri, "bench-mirror")
    started = time.perf_counter()
    target.mirror(records, source.artifact_uri)
    mirror_s = time.perf_counter() - started
    started = time.perf_counter()
    there = target.mirrored()
    listing_s = time.perf_counter() - started
    assert len(there) == len(records)
    mirror = {"records": len(records), "seconds": mirror_s, "records_per_s": len(records) / mirror_s,
              "listing_seconds": listing_s}
    print(f"registry mirror           {len(records)} records in {mirror_s:.1f} s ({mirror['records_per_s']:.0f}/s); "
          f"listing what is there {listing_s:.2f} s")
    return {"register": register, "report": report, "mirror": mirror}


if __name__ == "__main__":
    main()
