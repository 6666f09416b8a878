"""A sweep at fleet size: what a trial costs outside its own training, at 4 sites and at 100, with trials
reusing the worker processes of trials that ended (what sweeps do) and, side by side, one new process per trial.

    python benchmarks/sweep_scale.py [--sites 4 100] [--fresh-at 4] [--steps 200] [--epoch-steps 50]
                                     [--scheduler forecast|asha] [--json out.json]

Sites as ``benchmarks/fleet_scale.py`` makes them (here 7,000 resampled rows of a bundled turbine, as they
are, windy, moved), aligned to a small core prior in a local store. Per fleet size, in a fresh driver with an
embedded Ray of this machine's cores, ``run_sweep`` (what ``flowprior sweep`` runs) sweeps 9 lambdas per
site with per-site early stopping (``--scheduler``: forecast, the default, or ASHA; grace 1 epoch, ASHA's
reduction factor 3), after a lambda = 0 baseline per site, as
``tuning/lambda.yaml`` does, with short trials (``--steps`` in epochs of ``--epoch-steps``). Reported:
trials (baselines included), trial-epochs, wall time, the sites' data preparation in the driver, the
training a trial-epoch costs (timed in this process: the same encoder training, one thread), and so the
time per trial spent outside training: ``(wall - data preparation) x cores / trials - training per
trial`` (Tune's controller, the trial actors' start-up, checkpoints, moving the sites' data). At the fleet
sizes in ``--fresh-at`` the same sweep also runs with a new worker process per trial (``reuse_actors=False``),
each variant in its own copy of the store (nothing recorded by one is reused by the other).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import yaml  # noqa: E402
from fleet_scale import fleet_rows, make_fleet  # benchmarks/fleet_scale.py, beside this script  # noqa: E402

from machine import machine  # noqa: E402

ROWS = 7000  # a site's rows: enough for the target's own kNN NLL (5,000 points and 1,000 more), which the choice needs
GRID = [0.01, 0.001, 0.1, 0.0003, 0.3, 0.003, 0.03, 0.0001, 1.0]  # tuning/lambda.yaml's until 2026-12-06, in order

DRIVER = """
import json, sys, time
import ray
from pipeline.cli import TUNE_ENV
import os
os.environ.update(TUNE_ENV)
from pipeline.jobs.sweep import run_sweep
from pipeline.registry import Registry
from pipeline.storage import Store
from pipeline.sweeps import load_sweep_spec
from pipeline.jobs.sweep.run import site_data

store, spec = Store.open(sys.argv[1]), load_sweep_spec(sys.argv[2])
ray.init(num_cpus={cores}, log_to_driver=False, include_dashboard=False)
started = time.perf_counter()
site_data(spec, Registry(store))
preparation = time.perf_counter() - started
result = run_sweep(spec, store, say=lambda line: None, reuse_actors=sys.argv[3] == "reuse")
print(json.dumps({{"preparation_s": preparation, **result.metrics}}))
"""


def epoch_seconds(spec_path: str, store_uri: str, epoch_steps: int, epochs: int = 3) -> float:
    """Seconds one trial-epoch of encoder training takes in one thread (the mean of ``epochs``)."""
    import torch

    from pipeline.jobs.sweep.run import site_data
    from pipeline.method.encoder import EncoderTraining
    from pipeline.registry import Registry
    from pipeline.storage import Store
    from pipeline.sweeps import load_sweep_spec

    torch.set_num_threads(1)
    spec = load_sweep_spec(spec_path)
    data = next(iter(site_data(spec, Registry(Store.open(store_uri))).values()))
    training = EncoderTraining(data.observations.copy(), data.prior, data.alignment, data.target, data.layout,
                               data.seed, "cpu")
    training.advance(epoch_steps)  # warm-up
    started = time.perf_counter()
    for _ in range(epochs):
        training.advance(epoch_steps)
    return (time.perf_counter() - started) / epochs


def sweep_spec(folder: Path, specs: list[str], steps: int, epoch_steps: int, scheduler: str) -> str:
    spec = {"name": f"scale{len(specs)}", "sites": specs, "space": {"lambda": {"grid": GRID}}, "samples": 1,
            "steps": steps, "epoch_steps": epoch_steps,
            "scheduler": {"type": scheduler, "grace_epochs": 1, "reduction_factor": 3}, "resources": {"cpu": 1}}
    path = folder / f"sweep-{len(specs)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 100])
    parser.add_argument("--fresh-at", type=int, nargs="*", default=[4],
                        help="fleet sizes at which the sweep also runs with a new worker process per trial")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--epoch-steps", type=int, default=50)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--scheduler", choices=("forecast", "asha"), default="forecast")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "sweep_scale.json"))
    args = parser.parse_args()

    from tests.support.sites import publish_core

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        core_store = str(Path(tmp) / "core")
        publish_core(core_store, steps=150)
        pools = fleet_rows()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for n in args.sites:
            folder = Path(tmp) / f"sites-{n}"
            folder.mkdir()
            spec = sweep_spec(folder, make_fleet(folder, n, pools, ROWS), args.steps, args.epoch_steps, args.scheduler)
            per_epoch = epoch_seconds(spec, core_store, args.epoch_steps)
            results[str(n)] = {}
            for actors in ("reuse", "fresh") if n in args.fresh_at else ("reuse",):
                store = str(Path(tmp) / f"store-{n}-{actors}")
                shutil.copytree(core_store, store)
                started = time.perf_counter()
                run = subprocess.run([sys.executable, "-c", DRIVER.format(cores=args.cores), store, spec, actors],
                                     capture_output=True, text=True, env=env)
                if run.returncode != 0:
                    raise RuntimeError(run.stderr[-3000:])
                wall = time.perf_counter() - started
                m = json.loads(run.stdout.strip().splitlines()[-1])
                trials = m["trials"] + n  # the grid's and the baselines'
                epochs = m["trial_epochs"] + m["baseline_epochs"]
                training = epochs * per_epoch
                outside = ((m["seconds"] - m["preparation_s"]) * args.cores - training) / trials
                results[str(n)][actors] = {
                    "sites": n, "trials": trials, "trial_epochs": epochs, "compute_fraction": m["compute_fraction"],
                    "sweep_s": m["seconds"], "driver_wall_s": wall, "preparation_s": m["preparation_s"],
                    "epoch_training_s": per_epoch, "training_s": training, "outside_training_per_trial_s": outside,
                    "training_per_trial_s": training / trials}
                print(f"{n:4d} sites, {actors} actors: {trials} trials, {epochs} trial-epochs "
                      f"({m['compute_fraction']:.0%} of the grid's), sweep {m['seconds']:.0f} s (data preparation "
                      f"{m['preparation_s']:.0f} s), training {training / trials:.2f} s a trial, outside training "
                      f"{outside:.2f} s a trial", flush=True)
            if "fresh" in results[str(n)]:
                ratio = results[str(n)]["fresh"]["sweep_s"] / results[str(n)]["reuse"]["sweep_s"]
                results[str(n)]["fresh_over_reuse_sweep_s"] = ratio
                print(f"{n:4d} sites: a new process per trial takes {ratio:.1f}x the sweep's time", flush=True)
    results["machine"] = machine()
    results["settings"] = {"steps": args.steps, "epoch_steps": args.epoch_steps, "grid": GRID, "cores": args.cores,
                           "fresh_at": args.fresh_at, "scheduler": args.scheduler}
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
