"""ASHA against the full grid, side by side in one run: what early stopping costs and saves in a sweep.

    python benchmarks/sweep_asha_vs_grid.py [--spec tuning/lambda.yaml] [--core-steps 2000]

On the bundled La Haute Borne data, on a local Ray with this machine's CPUs:

1. fit the demo's core prior (Ray Train, 1 worker) into a fresh store;
2. run the sweep spec with every trial to the end (FIFO: the full grid), then the same spec with
   its ASHA scheduler; both are real ``run_sweep`` calls (Tune experiments under the store) and share
   the lambda = 0 baselines, which run once;
3. per site: the grid's best objective, the objective of the setting ASHA chose (its trial ran to
   the end, with the same seed as the grid's trial of that setting), their relative gap, and whether
   the same lambda was chosen; overall: trial-epochs and wall-clock of ASHA relative to the grid.

4. replay Tune's ASHA rule on the grid's recorded per-epoch objectives: first in the spec's own
   order (it must reproduce the real ASHA run's trial-epochs, which checks the replay), then in
   random orders of the grid for several grace periods, to show how much the result depends on
   which settings happen to run first (each site's first trial always runs to the end).

The issue's goal: the chosen setting's objective within 5% of the grid's best, with at most 35% of
the grid's trial-epochs. Writes ``benchmarks/results/sweep_asha_vs_grid.json``. ``--store DIR``
keeps the store; ``--from-store DIR`` redoes the analysis from a kept store without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.cli import TUNE_ENV
from pipeline.demo.run import DemoSettings
from pipeline.jobs import runtime
from pipeline.jobs.prior_fit import fit_core_prior
from pipeline.jobs.sweep import run_sweep
from pipeline.registry import Registry
from pipeline.storage import Store
from pipeline.sweeps import Scheduler, load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]


def replay_asha(objectives: dict[float, list[float]], order: list[float], grace: int, rf: float,
                epochs: int) -> tuple[int, float]:
    """One site's trials (lambda -> per-epoch objective) run one after another in ``order`` under Tune's
    ASHA rule (one bracket, ``ray.tune.schedulers.async_hyperband._Bracket``): a trial reaching a rung
    below ``epochs`` stops if its reward (-objective) is under the (1 - 1/rf) quantile of the rewards
    recorded there before it. Returns the trial-epochs spent and the lambda chosen (lowest final
    objective among the trials that ran to the end)."""
    rungs = {grace * rf ** k: [] for k in range(int(math.log(epochs / grace) / math.log(rf) + 1))
             if grace * rf ** k < epochs}
    spent, finished = 0, []
    for lam in order:
        for epoch, objective in enumerate(objectives[lam], start=1):
            spent += 1
            if epoch in rungs:
                recorded = rungs[epoch]
                stop = bool(recorded) and -objective < np.nanpercentile(recorded, (1 - 1 / rf) * 100)
                recorded.append(-objective)
                if stop:
                    break
        else:
            finished.append(lam)
    return spent, min(finished, key=lambda lam: objectives[lam][-1])


def analyse(spec, grid, asha, seconds: dict, orders: int = 200) -> dict:
    """The side-by-side numbers of the module docstring, from the two sweep records."""
    sites = {}
    for site, best in grid.config["choices"].items():
        chosen = asha.config["choices"][site]
        sites[site] = {"grid_lambda": best["lam"], "asha_lambda": chosen["lam"],
                       "grid_objective": best["objective"], "asha_objective": chosen["objective"],
                       "relative_gap": (chosen["objective"] - best["objective"]) / abs(best["objective"]),
                       "asha_trial_epochs": sum(t["epochs"] for t in asha.config["trials"] if t["site"] == site),
                       "grid_trial_epochs": sum(t["epochs"] for t in grid.config["trials"] if t["site"] == site),
                       "feasible": chosen["feasible"], "knn_nll": chosen["knn_nll"],
                       "target_knn_nll": chosen["target_knn_nll"], "recon": chosen["recon"],
                       "baseline_recon": chosen["baseline_recon"]}
    baseline_epochs = grid.metrics["baseline_epochs"]

    (dimension,) = [d for d in spec.space if d.sampler == "grid"]  # the replay handles one grid dimension
    objectives = {site: {t["config"]["lam"]: [h["objective"] for h in t["history"]]
                         for t in grid.config["trials"] if t["site"] == site} for site in sites}
    best = {site: min(o.values(), key=lambda h: h[-1])[-1] for site, o in objectives.items()}
    rf = spec.scheduler.reduction_factor
    replayed = {site: replay_asha(o, list(dimension.values), spec.scheduler.grace_epochs, rf, spec.epochs)[0]
                for site, o in objectives.items()}
    rng, robustness = random.Random(0), {}
    for grace in sorted({1, 2, 4, spec.scheduler.grace_epochs}):
        fractions, all_within = [], []
        for _ in range(orders):
            order = rng.sample(list(dimension.values), len(dimension.values))
            runs = {site: replay_asha(o, order, grace, rf, spec.epochs) for site, o in objectives.items()}
            fractions.append(sum(r[0] for r in runs.values()) / grid.metrics["trial_epochs"])
            all_within.append(all((objectives[s][lam][-1] - best[s]) <= 0.05 * abs(best[s])
                                  for s, (_, lam) in runs.items()))
        robustness[grace] = {"median_fraction": float(np.median(fractions)),
                             "p90_fraction": float(np.percentile(fractions, 90)),
                             "orders_all_sites_within_5pct": float(np.mean(all_within))}
    return {
        "spec": spec.to_dict(), "sites": sites,
        "trial_epochs": {"grid": grid.metrics["trial_epochs"], "asha": asha.metrics["trial_epochs"],
                         "baselines": baseline_epochs},
        "compute_ratio": asha.metrics["trial_epochs"] / grid.metrics["trial_epochs"],
        "compute_ratio_with_baselines": (asha.metrics["trial_epochs"] + baseline_epochs)
                                        / (grid.metrics["trial_epochs"] + baseline_epochs),
        "worst_relative_gap": max(s["relative_gap"] for s in sites.values()),
        "seconds": seconds, "wall_ratio": seconds["asha"] / seconds["grid"],
        "completed": {"grid": grid.metrics["completed"], "asha": asha.metrics["completed"]},
        "replay_matches_tune": {site: [replayed[site], sites[site]["asha_trial_epochs"]] for site in sites},
        "random_orders": {"orders": orders, "reduction_factor": rf, "by_grace_epochs": robustness},
        "grid_objectives": {site: {str(lam): o for lam, o in by_lam.items()} for site, by_lam in objectives.items()},
    }


def report(summary: dict) -> None:
    print(f"{'site':8s} {'grid lambda':>11s} {'ASHA lambda':>11s} {'grid best':>10s} {'ASHA choice':>11s} {'gap':>7s} "
          f"{'epochs ASHA/grid':>16s}")
    for site, s in summary["sites"].items():
        print(f"{site:8s} {s['grid_lambda']:11g} {s['asha_lambda']:11g} {s['grid_objective']:10.4f} "
              f"{s['asha_objective']:11.4f} {s['relative_gap']:+7.1%} "
              f"{s['asha_trial_epochs']:>7d}/{s['grid_trial_epochs']:<8d}")
    epochs, seconds = summary["trial_epochs"], summary["seconds"]
    print(f"trial-epochs: ASHA {epochs['asha']} / grid {epochs['grid']} = {summary['compute_ratio']:.1%} "
          f"({summary['compute_ratio_with_baselines']:.1%} counting the {epochs['baselines']} baseline epochs both "
          f"need); worst objective gap {summary['worst_relative_gap']:+.1%}")
    print(f"wall: ASHA {seconds['asha']:.0f} s / grid {seconds['grid']:.0f} s (grid includes the baselines) = "
          f"{summary['wall_ratio']:.2f}")
    print("replayed ASHA trial-epochs vs Tune's, per site: "
          + ", ".join(f"{site} {a}/{b}" for site, (a, b) in summary["replay_matches_tune"].items()))
    r = summary["random_orders"]
    for grace, v in r["by_grace_epochs"].items():
        print(f"grid in {r['orders']} random orders, grace {grace} epoch(s), "
              f"reduction factor {r['reduction_factor']:g}: "
              f"median {v['median_fraction']:.0%} (p90 {v['p90_fraction']:.0%}) of the grid's trial-epochs; every "
              f"site within 5% of the grid's best in {v['orders_all_sites_within_5pct']:.0%} of the orders")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "tuning" / "lambda.yaml"))
    parser.add_argument("--core-steps", type=int, default=2000)
    parser.add_argument("--store", help="keep the store (records, Tune experiments) here (default: a temporary one)")
    parser.add_argument("--from-store", metavar="DIR", help="analyse the sweeps a kept store holds; train nothing")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep_asha_vs_grid.json"))
    args = parser.parse_args()
    for name, value in TUNE_ENV.items():  # Tune's output as the flowprior command has it
        os.environ.setdefault(name, value)

    spec = load_sweep_spec(args.spec)
    if spec.scheduler.type != "asha":
        raise SystemExit(f"{args.spec}: its scheduler is {spec.scheduler.type}; this benchmark needs an ASHA spec")
    if args.from_store:  # the analysis again, from the records a kept store holds (wall times as they recorded)
        registry = Registry(Store.open(args.from_store))
        records = {label: next(r for r in registry.records(kind="sweep") if r.name == f"{spec.name}-{label}")
                   for label in ("grid", "asha")}
        core, seconds = records["grid"].parents[0], {k: r.metrics["seconds"] for k, r in records.items()}
    else:
        runtime.connect()
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(args.store or tmp)
            started = time.perf_counter()
            core = fit_core_prior(replace(DemoSettings(core_steps=args.core_steps).core_spec(), name="benchmark-core"),
                                  store).id
            seconds = {"core_fit": time.perf_counter() - started}
            records = {}
            for label, run_spec in (("grid", replace(spec, scheduler=Scheduler(type="fifo"))), ("asha", spec)):
                started = time.perf_counter()
                records[label] = run_sweep(run_spec, store, name=f"{spec.name}-{label}").record
                seconds[label] = time.perf_counter() - started  # the grid's includes the shared baselines

    summary = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
               "core": core, **analyse(spec, records["grid"], records["asha"], seconds)}
    Path(args.out).write_text(json.dumps(summary, indent=1))
    report(summary)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
