"""A federated core prior against the pooled one, at equal total training samples.

    python benchmarks/federated.py [--steps 2000] [--local-steps 5 10 50] [--compare-at 10] [--mu 0.01]
                                   [--dp-epsilon 1.0] [--pools turbines groups]

On the bundled La Haute Borne data, in one process (the method library and the federated run over
in-process sites, :mod:`pipeline.federated.local`: the same site and server code the Flower apps run,
without the network), for two pools of ``benchmarks/site_decisions.py``:

* ``turbines``: the healthy, complete 2014 rows of each of the four turbines, one turbine per site;
* ``groups``: the same rows, each turbine's moved by 3 sd along its own column (sites that differ strongly).

For each pool: the pooled core (``FlowPrior.fit`` on every site's training rows, ``--steps`` steps of a
256-row batch), then federated fits of ``steps / local_steps`` rounds, each site taking ``local_steps`` steps
of a ``256 / 4``-row batch per round (so both see ``steps x 256`` samples): FedAvg with the shared AdamW state
(the default) for each ``--local-steps``; at ``--compare-at`` local steps, textbook FedAvg (a fresh AdamW on
each site every round) and FedProx (``--mu``); at the default local steps, FedAvg on DP-noised moments
(``--dp-epsilon``; its held-out FM is in its own, noisier, prior space). Every site holds
out its own rows (by row hash); each prior's held-out FM is measured on each site's held-out rows, by the
same function, after every round. Reported: the per-site ratio federated / pooled, the first round at which
every site is within 2% of the pooled core, bytes per round and in all against the sites' data size, and
wall time. Writes ``benchmarks/results/federated.json`` (``sites``: per site, the chosen setting's
``federated_heldout_fm`` and ``pooled_heldout_fm``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import la_haute_borne as lhb
from pipeline.federated.local import LocalSites
from pipeline.federated.server import fit_federated
from pipeline.federated.site import SiteRows, site_heldout_fm
from pipeline.federated.spec import FederatedSpec, Privacy
from pipeline.method.configs import FitConfig
from pipeline.method.prior import FlowPrior
from pipeline.storage import Store

from machine import cpu_name
from site_decisions import CORE, group_pool, load

BATCH = 256
EVALUATIONS = 40  # held-out evaluations per federated run (every round would cost more than the training)
WITHIN = 0.02  # the goal: every site's federated held-out FM within 2% of the pooled core's


def pools() -> dict[str, dict[str, np.ndarray]]:
    """Each pool's sites: rows (n, 10) by site id."""
    turbines = {t: load({"site": t, "year": 2014, "fault": False}) for t in lhb.TURBINES}
    moved = {t: x + 3.0 * np.eye(x.shape[1], dtype=np.float32)[k] for k, (t, x) in enumerate(turbines.items())}
    assert len(group_pool()[0]) == sum(len(x) for x in moved.values())  # the pool site_decisions.py builds
    return {"turbines": turbines, "groups": moved}


def pooled(rows: dict[str, SiteRows], steps: int) -> tuple[dict, float]:
    """The pooled core's held-out FM on each site, and its wall time."""
    started = time.perf_counter()
    prior = FlowPrior.fit(np.concatenate([r.train for r in rows.values()]), **CORE, fit=FitConfig(steps=steps,
                          batch_size=BATCH), seed=0)
    seconds = time.perf_counter() - started
    weights = prior.velocity.state_dict()
    fm = {s: site_heldout_fm(weights, prior.velocity.config, prior.space, r.heldout) for s, r in rows.items()}
    return fm, seconds


def federated(rows: dict[str, SiteRows], steps: int, local_steps: int, strategy: str, shared: bool, args,
              privacy: Privacy | None, target: dict[str, float]) -> dict:
    """One federated fit: per-round held-out FM on each site, the first round within ``WITHIN`` of ``target``."""
    spec = FederatedSpec(sites=tuple(rows), name="bench", rounds=steps // local_steps, local_steps=local_steps,
                         strategy=strategy, mu=args.mu, share_optimiser=shared, fit=FitConfig(batch_size=BATCH),
                         privacy=privacy,
                         latent_dim=CORE["latent_dim"], projection=CORE["projection"], normaliser=CORE["normaliser"],
                         width=CORE["width"], depth=CORE["depth"])
    link, curve = LocalSites(rows, spec), []
    every = max(1, spec.rounds // EVALUATIONS)

    def evaluate(state) -> None:
        if state.round % every and state.round != spec.rounds:
            return
        velocity = spec.velocity(state.space.latent_dim)
        fm = {s: site_heldout_fm(state.ema, velocity, state.space, r.heldout) for s, r in rows.items()}
        curve.append({"round": state.round, "bytes": state.history[-1]["bytes"], "heldout_fm": fm,
                      "worst_ratio": max(fm[s] / target[s] for s in fm)})

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        record = fit_federated(link, spec, Store.open(tmp), say=lambda _: None, on_round=evaluate)
    seconds = time.perf_counter() - started
    final = curve[-1]["heldout_fm"]
    reached = next((c["round"] for c in curve if c["worst_ratio"] <= 1 + WITHIN), None)
    return {"strategy": strategy, "mu": spec.proximal_mu, "share_optimiser": shared, "local_steps": local_steps,
            "rounds": spec.rounds, "dp_epsilon": privacy.epsilon if privacy else None,
            "heldout_fm": final, "ratio_to_pooled": {s: final[s] / target[s] for s in final},
            "worst_ratio": curve[-1]["worst_ratio"], "rounds_to_within_2pct": reached,
            "bytes_per_round": curve[-1]["bytes"], "evaluated_every": every,
            "bytes_total": record.config["federated"]["bytes_exchanged"],
            "seconds": seconds, "curve": [{k: c[k] for k in ("round", "worst_ratio")} for c in curve]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="pooled steps; federated rounds x local steps")
    parser.add_argument("--local-steps", type=int, nargs="+", default=[5, 10, 50],
                        help="runs of FedAvg with the shared AdamW state")
    parser.add_argument("--compare-at", type=int, default=10,
                        help="local steps of the textbook FedAvg and the FedProx runs (0: none)")
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal weight")
    parser.add_argument("--dp-epsilon", type=float, nargs="*", default=[1.0], help="runs on noised moments")
    parser.add_argument("--pools", nargs="+", default=["turbines", "groups"], choices=["turbines", "groups"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "federated.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, results = time.perf_counter(), {}
    for pool, sites in pools().items():
        if pool not in args.pools:
            continue
        rows = {s: SiteRows.of(s, x, 0.1, columns=list(lhb.FEATURES)) for s, x in sites.items()}
        target, seconds = pooled(rows, args.steps)
        data_bytes = sum(r.train.nbytes for r in rows.values())
        print(f"{pool}: pooled core in {seconds:.0f} s, held-out FM " + ", ".join(f"{s} {v:.4f}" for s, v in
                                                                                 target.items()), flush=True)
        default = FederatedSpec(sites=("a",))
        runs = [(L, "fedavg", True, None) for L in args.local_steps]
        runs += [(args.compare_at, "fedavg", False, None), (args.compare_at, "fedprox", True, None)] \
            if args.compare_at else []
        runs += [(default.local_steps, "fedavg", True, Privacy(epsilon=e)) for e in args.dp_epsilon]
        out = []
        for local_steps, strategy, shared, privacy in runs:
            run = federated(rows, args.steps, local_steps, strategy, shared, args, privacy, target)
            out.append(run)
            label = f"{strategy} {'shared' if shared else 'fresh'} L={local_steps} eps={run['dp_epsilon']}"
            print(f"  {label:32s}: worst ratio {run['worst_ratio']:.4f},"
                  f" within 2% from round {run['rounds_to_within_2pct']} of {run['rounds']}, "
                  f"{run['bytes_per_round'] / 2**20:.2f} MiB/round, {run['bytes_total'] / 2**20:.1f} MiB in all "
                  f"({run['bytes_total'] / data_bytes:.2f}x the sites' rows), {run['seconds']:.0f} s", flush=True)
        results[pool] = {"pooled_heldout_fm": target, "pooled_seconds": seconds, "data_bytes": data_bytes,
                         "rows": {s: len(r.train) for s, r in rows.items()}, "federated": out}
    default = FederatedSpec(sites=("a",))  # the setting a fit gets without flags, if it ran; else the best one
    chosen = {pool: next((r for r in res["federated"] if r["dp_epsilon"] is None and r["strategy"] == default.strategy
                          and r["local_steps"] == default.local_steps and r["share_optimiser"]),
                         min((r for r in res["federated"] if r["dp_epsilon"] is None), key=lambda r: r["worst_ratio"]))
              for pool, res in results.items()}
    sites = {f"{pool} {s}": {"federated_heldout_fm": run["heldout_fm"][s],
                             "pooled_heldout_fm": results[pool]["pooled_heldout_fm"][s],
                             "ratio": run["ratio_to_pooled"][s],
                             "setting": {k: run[k] for k in ("strategy", "mu", "share_optimiser", "local_steps")}}
             for pool, run in chosen.items() for s in run["heldout_fm"]}
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__}
    out = {"machine": machine, "steps": args.steps, "batch": BATCH, "within": WITHIN, "sites": sites,
           "pools": results, "seconds": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    worst = max(v["ratio"] for v in sites.values())
    print(f"worst site federated / pooled: {worst:.4f} (goal <= {1 + WITHIN}); wrote {args.json} "
          f"({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
