"""Early stopping against the full grid, side by side in one run: what ASHA and the forecast rule cost and save.

    python benchmarks/sweep_early_stopping.py [--spec tuning/lambda.yaml] [--core-steps 2000]
    python benchmarks/sweep_early_stopping.py --spec benchmarks/heldout/lambda.yaml   # sites the rule was not made on

On the bundled La Haute Borne data, on a local Ray with this machine's CPUs:

1. fit the demo's core prior (Ray Train, 1 worker) into a fresh store;
2. run the spec's sites and search space three times, as real ``run_sweep`` calls (Tune experiments under
   the store) sharing the lambda = 0 baselines: every trial to the end (FIFO: "the grid"), per-site ASHA
   (grace 1 epoch, reduction factor 3) and per-site forecast stopping (``pipeline.sweeps.forecast``, the
   spec's grace);
3. per site and rule: the grid's best objective, the objective of the rule's choice (its trial ran to the
   end with the same seed as the grid's trial of that setting), their relative gap; overall: trial-epochs
   and wall-clock of each rule relative to the grid;
4. replay both rules on the grid's recorded per-epoch numbers: first in the spec's order (it must reproduce
   the real runs' trial-epochs, which checks the replay), then in 200 random orders of the grid (each site's
   trials one after another, as Tune runs them here), beside the floor no rule that runs a site's trials
   one after another can go under: every trial that beats the ones before it runs to the end, every other
   stops after one epoch.

The goal (issue #30): at most 35% of the grid's trial-epochs, every site's choice within 5% of the grid's
best in at least 90% of random orders. Writes ``benchmarks/results/sweep_early_stopping.json`` (with
``--spec``: ``sweep_early_stopping-<spec name>.json``); ``--store DIR`` keeps the store; ``--from-store
DIR`` redoes the analysis from a kept store without training.
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
from pipeline.demo.settings import DemoSettings
from pipeline.jobs import runtime
from pipeline.jobs.prior_fit import fit_core_prior
from pipeline.jobs.sweep import run_sweep
from pipeline.registry import Registry
from pipeline.storage import Store
from pipeline.sweeps import Scheduler, load_sweep_spec
from pipeline.sweeps.forecast import ForecastStop

ROOT = Path(__file__).resolve().parents[1]
ORDERS = 200
ASHA_REPLAYS = ((1, 3.0), (2, 3.0), (4, 3.0), (7, 2.0))  # (grace epochs, reduction factor)


def replay_asha(curves: dict[float, list[dict]], order: list[float], epochs: int, grace: int, rf: float) -> list:
    """One site's trials (lambda -> per-epoch results) run one after another in ``order`` under Tune's ASHA rule
    (one bracket, ``ray.tune.schedulers.async_hyperband._Bracket``): a trial reaching a rung below ``epochs``
    stops if its reward (-objective) is under the (1 - 1/rf) quantile of the rewards recorded there before it.
    Returns the epochs each trial ran."""
    rungs = {grace * rf ** k: [] for k in range(int(math.log(epochs / grace) / math.log(rf) + 1))
             if grace * rf ** k < epochs}
    ran = []
    for lam in order:
        for epoch, result in enumerate(curves[lam], start=1):
            if epoch in rungs:
                recorded = rungs[epoch]
                stop = bool(recorded) and -result["objective"] < np.nanpercentile(recorded, (1 - 1 / rf) * 100)
                recorded.append(-result["objective"])
                if stop:
                    break
        ran.append(epoch)
    return ran


def replay_forecast(curves: dict[float, list[dict]], order: list[float], epochs: int, rule: ForecastStop) -> list:
    """The same trials under :class:`ForecastStop` (a fresh copy of ``rule``): the epochs each trial ran."""
    rule, ran = replace(rule, finished=[], best=math.inf), []
    for lam in order:
        for epoch, result in enumerate(curves[lam], start=1):
            if rule.stops(result["knn_nll"], epoch):
                break
        ran.append(epoch)
        if epoch == epochs:
            rule.finish([r["knn_nll"] for r in curves[lam]], curves[lam][-1]["objective"])
    return ran


def replay_floor(curves: dict[float, list[dict]], order: list[float], epochs: int) -> list:
    """The floor: a trial whose final objective beats every trial before it runs to the end, any other one epoch."""
    best, ran = math.inf, []
    for lam in order:
        final = curves[lam][-1]["objective"]
        ran.append(epochs if final < best else 1)
        best = min(best, final)
    return ran


def chosen(curves: dict[float, list[dict]], order: list[float], ran: list[int], epochs: int) -> float:
    """The lambda a replay chooses: the lowest final objective among the trials that ran to the end."""
    finished = [lam for lam, e in zip(order, ran, strict=True) if e == epochs]
    return min(finished, key=lambda lam: curves[lam][-1]["objective"])


def rules_of(spec) -> dict[str, Scheduler]:
    """The three runs: the grid, ASHA (grace 1, factor 3) and forecast stopping (the spec's grace if it has one)."""
    grace = spec.scheduler.grace_epochs if spec.scheduler.type == "forecast" else 1
    return {"grid": Scheduler(type="fifo"), "asha": Scheduler(type="asha", grace_epochs=1, reduction_factor=3),
            "forecast": Scheduler(type="forecast", grace_epochs=grace)}


def analyse(spec, records: dict, seconds: dict) -> dict:
    """The side-by-side numbers of the module docstring, from the sweep records (``grid`` and each rule's)."""
    grid = records["grid"]
    (dimension,) = [d for d in spec.space if d.sampler == "grid"]  # the replays handle one grid dimension
    curves = {site: {t["config"]["lam"]: t["history"] for t in grid.config["trials"] if t["site"] == site}
              for site in grid.config["choices"]}
    best = {site: min(h[-1]["objective"] for h in c.values()) for site, c in curves.items()}
    grace = rules_of(spec)["forecast"].grace_epochs
    rules = {site: ForecastStop(spec.select, grid.config["choices"][site]["target_knn_nll"], spec.epochs, grace)
             for site in curves}

    def replays(order: list[float]) -> dict[str, dict[str, list[int]]]:  # rule -> site -> epochs each trial ran
        out = {f"asha grace {g} rf {rf:g}": {s: replay_asha(c, order, spec.epochs, g, rf) for s, c in curves.items()}
               for g, rf in ASHA_REPLAYS}
        out["forecast"] = {s: replay_forecast(c, order, spec.epochs, rules[s]) for s, c in curves.items()}
        out["floor"] = {s: replay_floor(c, order, spec.epochs) for s, c in curves.items()}
        return out

    rng = random.Random(0)
    orders = [rng.sample(list(dimension.values), len(dimension.values)) for _ in range(ORDERS)]
    fractions, within = {}, {}  # rule -> per order: its share of the grid's trial-epochs; {site: within 5%}
    for order in orders:
        for label, by_site in replays(order).items():
            fractions.setdefault(label, []).append(sum(map(sum, by_site.values())) / grid.metrics["trial_epochs"])
            finals = {s: curves[s][chosen(curves[s], order, ran, spec.epochs)][-1]["objective"]
                      for s, ran in by_site.items()}
            within.setdefault(label, []).append({s: final - best[s] <= 0.05 * abs(best[s])
                                                 for s, final in finals.items()})
    random_orders = {}
    for label, f in fractions.items():
        every = float(np.mean([all(w.values()) for w in within[label]]))
        random_orders[label] = {"median_fraction": float(np.median(f)), "p90_fraction": float(np.percentile(f, 90)),
                                "orders_all_sites_within_5pct": every,
                                "orders_within_5pct_by_site": {s: float(np.mean([w[s] for w in within[label]]))
                                                               for s in curves},
                                "meets_goal": bool(np.median(f) <= 0.35 and every >= 0.9)}

    in_spec_order = replays(list(dimension.values))
    runs, base = {}, grid.metrics["baseline_epochs"]
    for label in ("asha", "forecast"):
        record = records[label]
        replayed = in_spec_order[label if label == "forecast" else "asha grace 1 rf 3"]
        sites = {}
        for site, grid_choice in grid.config["choices"].items():
            choice, grid_best = record.config["choices"][site], grid_choice["objective"]
            sites[site] = {"grid_lambda": grid_choice["lam"], "lambda": choice["lam"],
                           "grid_objective": grid_best, "objective": choice["objective"],
                           "relative_gap": (choice["objective"] - grid_best) / abs(grid_best),
                           "trial_epochs": sum(t["epochs"] for t in record.config["trials"] if t["site"] == site),
                           "replayed_trial_epochs": sum(replayed[site]),
                           "grid_trial_epochs": sum(t["epochs"] for t in grid.config["trials"] if t["site"] == site)}
        spent, grid_spent = record.metrics["trial_epochs"], grid.metrics["trial_epochs"]
        runs[label] = {"sites": sites, "trial_epochs": spent, "compute_ratio": spent / grid_spent,
                       "compute_ratio_with_baselines": (spent + base) / (grid_spent + base),
                       "worst_relative_gap": max(s["relative_gap"] for s in sites.values()),
                       "wall_ratio": seconds[label] / seconds["grid"],
                       "replay_differs": {site: [s["trial_epochs"], s["replayed_trial_epochs"]]
                                          for site, s in sites.items()
                                          if s["trial_epochs"] != s["replayed_trial_epochs"]}}
    return {"spec": spec.to_dict(), "seconds": seconds,
            "trial_epochs": {"grid": grid.metrics["trial_epochs"], "baselines": grid.metrics["baseline_epochs"]},
            "runs": runs, "random_orders": {"orders": ORDERS, "rules": random_orders},
            "grid_curves": {site: {str(lam): [{k: h[k] for k in ("knn_nll", "objective")} for h in history]
                                   for lam, history in by_lam.items()} for site, by_lam in curves.items()}}


def report(summary: dict) -> None:
    for label, run in summary["runs"].items():
        print(f"{label}: {'site':8s} {'grid lambda':>11s} {'its lambda':>10s} {'grid best':>10s} {'its choice':>10s} "
              f"{'gap':>7s} {'epochs / grid':>14s}")
        for site, s in run["sites"].items():
            print(f"{' ' * len(label)}  {site:8s} {s['grid_lambda']:11g} {s['lambda']:10g} "
                  f"{s['grid_objective']:10.4f} {s['objective']:10.4f} {s['relative_gap']:+7.1%} "
                  f"{s['trial_epochs']:>6d}/{s['grid_trial_epochs']:<7d}")
        print(f"{' ' * len(label)}  trial-epochs {run['trial_epochs']} / grid {summary['trial_epochs']['grid']} = "
              f"{run['compute_ratio']:.1%} ({run['compute_ratio_with_baselines']:.1%} with the baselines); worst gap "
              f"{run['worst_relative_gap']:+.1%}; wall {run['wall_ratio']:.2f} of the grid's")
        differs = ", ".join(f"{site} {tune} in Tune, {replay} replayed" for site, (tune, replay)
                            in run["replay_differs"].items())
        print(f"{' ' * len(label)}  the replay in the spec's order gives Tune's trial-epochs "
              + (f"except on {differs} (trials of a site ran side by side)" if differs else "on every site"))
    r = summary["random_orders"]
    print(f"the grid in {r['orders']} random orders, replayed:")
    for label, v in r["rules"].items():
        print(f"  {label:18s} median {v['median_fraction']:.0%} (p90 {v['p90_fraction']:.0%}) of the grid's "
              f"trial-epochs; every site within 5% of the grid's best in "
              f"{v['orders_all_sites_within_5pct']:.0%} of the orders ("
              + ", ".join(f"{s} {share:.0%}" for s, share in v["orders_within_5pct_by_site"].items()) + ")"
              f"{'  (meets the goal)' if v['meets_goal'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "tuning" / "lambda.yaml"))
    parser.add_argument("--core-steps", type=int, default=2000)
    parser.add_argument("--store", help="keep the store (records, Tune experiments) here (default: a temporary one)")
    parser.add_argument("--from-store", metavar="DIR", help="analyse the sweeps a kept store holds; train nothing")
    parser.add_argument("--out", help="default: benchmarks/results/sweep_early_stopping[-<spec name>].json")
    args = parser.parse_args()
    for name, value in TUNE_ENV.items():  # Tune's output as the flowprior command has it
        os.environ.setdefault(name, value)

    spec = load_sweep_spec(args.spec)
    suffix = "" if Path(args.spec).resolve() == ROOT / "tuning" / "lambda.yaml" else f"-{spec.name}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"sweep_early_stopping{suffix}.json")
    if args.from_store:  # the analysis again, from the records a kept store holds (wall times as they recorded)
        registry = Registry(Store.open(args.from_store))
        records = {label: next(r for r in registry.records(kind="sweep") if r.name == f"{spec.name}-{label}")
                   for label in rules_of(spec)}
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
            for label, scheduler in rules_of(spec).items():
                started = time.perf_counter()
                run_spec = replace(spec, scheduler=scheduler)
                records[label] = run_sweep(run_spec, store, name=f"{spec.name}-{label}").record
                seconds[label] = time.perf_counter() - started  # the grid's includes the shared baselines

    summary = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
               "core": core, **analyse(spec, records, seconds)}
    out.write_text(json.dumps(summary, indent=1))
    report(summary)
    print(f"written {out}")


if __name__ == "__main__":
    main()
