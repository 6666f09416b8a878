"""Where reuse stops paying and refit starts: the numbers behind the site-check thresholds.

    python benchmarks/site_decisions.py [--core-steps 2000] [--finetune-steps 1000] [--refit-steps 3000]
                                        [--probe-steps 100] [--lambdas 0 0.01 0.1 1]

On the bundled La Haute Borne data, in one process (the method library, no Ray), one run:

1. fit the core prior on the healthy 2014 rows of all four turbines (the demo's settings);
2. for each site -- the four turbines' healthy 2015 rows, one turbine's own 2014 rows (one part of
   the core's pool), the same turbine's 2015 rows with its power curve degraded (x0.9, x0.75, x0.5:
   a site that drifted), with its columns permuted (an unrelated machine on the same scale), shifted
   by 3, 4.5 and 6 sd, and restricted to one wind regime (low / high wind) or one season (winter,
   summer) -- measure the site check's numbers (``probe_gain`` of a ``--probe-steps`` fine-tune,
   ``fm_ratio``, ``nll_gap``, ``mmd``), then the held-out FM loss of (a) reusing the core, (b)
   fine-tuning it, (c) refitting from scratch (``--refit-steps 0`` skips the refits);
   then the same for a pool of clearly different groups: the four turbines' 2014 rows, each moved
   by 3 sd along its own direction, a second core fitted on all four, each group's 2015 rows
   checked as a site;
3. report, per site, how much a site prior gains over reuse, where the decision falls, and the
   confusion table against the rule's contract: ``reuse`` where reusing is within 3% of the best
   site prior's held-out FM, never ``reuse`` where it is 5% or more worse;
4. for each real turbine, train its encoder (its spec: observations, widths, steps) against the
   core prior at lambda in ``--lambdas`` (0 is the plain autoencoder) and report reconstruction
   error, kNN NLL proxy and spread of the latents, and the AUROC with which the latent's
   ``L_align`` and the reconstruction error flag the rows with impossible readings (2015 rows,
   which the encoder trained on unlabelled, and 2014 rows, which it never saw).

Writes ``benchmarks/results/site_decisions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.data import read_features
from pipeline.data.split import split_indices
from pipeline.datasets import la_haute_borne as lhb
from pipeline.demo.faults import fault_scores, site_rows
from pipeline.demo.settings import DemoSettings
from pipeline.method.configs import FitConfig
from pipeline.method.encoder import train_encoder
from pipeline.method.metrics import auroc
from pipeline.method.prior import FlowPrior
from pipeline.sites import load_site_spec
from pipeline.sites.align import alignment_data
from pipeline.sites.decision import decide, measure, probe_finetune
from pipeline.sites.site_prior import site_fit_config, train_site_prior
from pipeline.sites.spec import FinetuneSettings, Thresholds

DEMO = DemoSettings()
CORE = {"latent_dim": DEMO.latent_dim, "projection": "pca", "normaliser": "per-dim", "width": DEMO.width,
        "depth": DEMO.depth}
SAMPLES = 1000


def load(filters: dict) -> np.ndarray:
    """The complete rows matching ``filters``, as the model features (n, 10)."""
    return read_features(str(lhb.PARQUET), columns=lhb.FEATURES, filters=filters, drop_nonfinite=True).values


def degraded_power(x: np.ndarray, factor: float) -> np.ndarray:
    """The rows with power scaled by ``factor`` in kW (the column is z-scored: undo, scale, redo)."""
    scaling = json.loads(pq.read_schema(lhb.PARQUET).metadata[b"feature_scaling"])
    mean, std = scaling["power"]
    out = x.copy()
    j = lhb.FEATURES.index("power")
    out[:, j] = ((x[:, j] * std + mean) * factor - mean) / std
    return out


def load_where(site: str, year: int, keep) -> np.ndarray:
    """A turbine's healthy, complete rows of ``year`` for which ``keep(time, features)`` holds (n, 10)."""
    table = pq.read_table(lhb.PARQUET, columns=["time", *lhb.FEATURES],
                          filters=[("site", "=", site), ("year", "=", year), ("fault", "=", False)])
    x = np.stack([table[c].to_numpy(zero_copy_only=False) for c in lhb.FEATURES], axis=1)  # (n, 10)
    months = pc.month(table["time"]).to_numpy()
    rows = np.isfinite(x).all(axis=1) & keep(months, x)
    return x[rows].astype(np.float32)


def core_pool() -> np.ndarray:
    """The core prior's rows: the healthy, complete 2014 rows of all four turbines (n, 10)."""
    return load({"year": 2014, "fault": False})


def turbine_sites() -> dict[str, np.ndarray]:
    """The sites checked against the core of :func:`core_pool` (module docstring, step 2), by name: rows (n, 10)."""
    r80711_2015 = load({"site": "R80711", "year": 2015, "fault": False})
    rng = np.random.default_rng(0)
    sites = {f"{t} 2015": load({"site": t, "year": 2015, "fault": False}) for t in lhb.TURBINES}
    sites["R80711 2014 (a part of the core's pool)"] = load({"site": "R80711", "year": 2014, "fault": False})[:20000]
    for factor in (0.9, 0.75, 0.5):
        sites[f"R80711 2015 power x{factor}"] = degraded_power(r80711_2015, factor)
    sites["R80711 2015 columns permuted"] = r80711_2015[:, rng.permutation(r80711_2015.shape[1])]
    for shift in (3.0, 4.5, 6.0):  # every column moved by `shift` (pooled) standard deviations: far outside the core
        sites[f"R80711 2015 shifted +{shift:g} sd"] = r80711_2015 + shift
    wind = lhb.FEATURES.index("wind_speed")  # z-scored over the fleet
    sites["R80711 2015 low wind (< -0.5 sd)"] = load_where("R80711", 2015, lambda m, x: x[:, wind] < -0.5)
    sites["R80711 2015 high wind (> +1 sd)"] = load_where("R80711", 2015, lambda m, x: x[:, wind] > 1.0)
    sites["R80711 2015 winter (Dec-Feb)"] = load_where("R80711", 2015, lambda m, x: np.isin(m, (12, 1, 2)))
    sites["R80711 2015 summer (Jun-Aug)"] = load_where("R80711", 2015, lambda m, x: np.isin(m, (6, 7, 8)))
    return sites


def group_pool() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A pool of clearly different groups (each turbine's 2014 rows moved 3 sd along its own column), and its
    sites: each group's 2015 rows, moved alike."""
    moves = {t: 3.0 * np.eye(len(lhb.FEATURES), dtype=np.float32)[k] for k, t in enumerate(lhb.TURBINES)}
    groups = np.concatenate([load({"site": t, "year": 2014, "fault": False}) + moves[t] for t in lhb.TURBINES])
    sites = {f"group {t} (moved +3 sd)": load({"site": t, "year": 2015, "fault": False}) + moves[t]
             for t in lhb.TURBINES}
    return groups, sites


def label(reuse_vs_site: float) -> str:
    """The rule's contract: within 3% of the best site prior -> reuse; 5% or more worse -> not reuse."""
    return "reuse" if reuse_vs_site <= 1.03 else "not reuse" if reuse_vs_site >= 1.05 else "either"


def check_site(core: FlowPrior, core_fm: float, core_nll: float, name: str, x: np.ndarray, args,
               started: float) -> dict:
    """The check's numbers and decision for site rows ``x``, then what a fine-tune and a refit reach."""
    tr, he = split_indices(x, 0.1, seed=0)
    z_train, z_held = core.to_prior(x[tr]), core.to_prior(x[he])
    numbers = {**measure(core, z_held, core_fm, core_nll, SAMPLES),
               **probe_finetune(core, z_train, z_held, args.probe_steps, lr=3e-4, batch_size=256)}
    runs = {}
    for mode, steps in (("finetune", args.finetune_steps), ("refit", args.refit_steps)):
        if steps:
            fit = site_fit_config(core, mode, steps, lr=3e-4, batch_size=256, log_every=50)  # lr: finetune only
            prior = train_site_prior(core, z_train, z_held, mode, fit, seed=0)
            runs[mode] = [(h["step"], h["heldout_fm"]) for h in prior.info["history"]]
    best = min(curve[-1][1] for curve in runs.values())
    refit_fm = runs["refit"][-1][1] if "refit" in runs else None
    reached = next((step for step, fm in runs["finetune"] if refit_fm and fm <= 1.05 * refit_fm), None)
    row = {"site": name, "rows": len(x), **{k: numbers[k] for k in ("probe_gain", "fm_ratio", "nll_gap", "mmd")},
           "decision": decide(numbers, Thresholds()), "fm_reuse": numbers["fm_site"],
           "fm_probe": numbers["fm_probe"], "fm_finetune": runs["finetune"][-1][1], "fm_refit": refit_fm,
           "finetune_gain": 1 - runs["finetune"][-1][1] / numbers["fm_site"],
           "reuse_vs_site": numbers["fm_site"] / best, "truth": label(numbers["fm_site"] / best),
           "steps_to_refit_fm": reached, "curves": runs}
    print(f"{name:34s} probe {row['probe_gain']:+.3f}  fm_ratio {row['fm_ratio']:7.3f}  nll_gap {row['nll_gap']:+7.3f}"
          f"  -> {row['decision']:8s} | FM reuse {row['fm_reuse']:.4f} finetune {row['fm_finetune']:.4f} refit "
          f"{refit_fm if refit_fm is None else round(refit_fm, 4)} | reuse / best site prior "
          f"{row['reuse_vs_site']:.3f} ({row['truth']}) ({time.perf_counter() - started:.0f} s)", flush=True)
    return row


def confusion(rows: list[dict]) -> dict:
    """Counts of (truth, decision), and the sites that break the contract."""
    table = {t: {d: sum(r["truth"] == t and r["decision"] == d for r in rows) for d in ("reuse", "finetune", "refit")}
             for t in ("reuse", "either", "not reuse")}
    wrong = [r["site"] for r in rows
             if (r["truth"] == "reuse") != (r["decision"] == "reuse") and r["truth"] != "either"]
    return {"table": table, "violations": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core-steps", type=int, default=DEMO.core_steps)
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--refit-steps", type=int, default=3000, help="0: no refits (the best site prior is the "
                                                                      "fine-tune)")
    parser.add_argument("--probe-steps", type=int, default=FinetuneSettings.probe_steps)
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.0, 0.01, 0.1, 1.0],
                        help="encoder runs per turbine (none: skip the encoders)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "site_decisions.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    pool = core_pool()
    train, held = split_indices(pool, 0.1, seed=0)
    core = FlowPrior.fit(pool[train], **CORE, fit=FitConfig(steps=args.core_steps), seed=0)
    z_core = core.to_prior(pool[held])
    own = measure(core, z_core, 1.0, 0.0, SAMPLES)
    core_fm, core_nll = own["fm_site"], own["nll_site"]
    print(f"core: {len(train)} rows, held-out FM {core_fm:.4f}, held-out kNN NLL {core_nll:.3f} "
          f"({time.perf_counter() - started:.0f} s)")

    sites = turbine_sites()
    rows = [check_site(core, core_fm, core_nll, name, x, args, started) for name, x in sites.items()]

    groups, group_sites = group_pool()
    g_train, g_held = split_indices(groups, 0.1, seed=0)
    group_core = FlowPrior.fit(groups[g_train], **CORE, fit=FitConfig(steps=args.core_steps), seed=0)
    g_own = measure(group_core, group_core.to_prior(groups[g_held]), 1.0, 0.0, SAMPLES)
    print(f"group core: {len(g_train)} rows ({time.perf_counter() - started:.0f} s)")
    for name, x in group_sites.items():
        rows.append(check_site(group_core, g_own["fm_site"], g_own["nll_site"], name, x, args, started))
    verdict = confusion(rows)
    print("truth \\ decision   reuse  finetune  refit")
    for truth, counts in verdict["table"].items():
        print(f"{truth:18s} {counts['reuse']:5d} {counts['finetune']:9d} {counts['refit']:6d}")
    print(f"contract violations: {verdict['violations'] or 'none'}; the check's probe costs {args.probe_steps} steps, "
          f"{args.probe_steps / args.finetune_steps:.0%} of a fine-tune's {args.finetune_steps}")

    alignment = []
    for turbine in lhb.TURBINES if args.lambdas else ():
        spec = load_site_spec(DEMO.sites / f"{turbine}.yaml")
        observations, z_target, reference = alignment_data(spec, core)
        for lam in args.lambdas:
            run = train_encoder(observations.values, core, replace(spec.alignment, lam=lam), z_target,
                                spec.encoder.layout(), seed=spec.seed)
            found = {}
            for year in (2015, 2014):
                x, labels = site_rows(turbine, year)
                scores = fault_scores(run.model, core, x)
                if labels.any():
                    found[year] = {name: auroc(torch.from_numpy(scores[name]), torch.from_numpy(labels))
                                   for name in ("l_align", "recon")} | {"faults": int(labels.sum())}
            row = {"site": turbine, "lambda": lam, **run.metrics, "target_knn_nll": reference, "auroc": found}
            alignment.append(row)
            print(f"{turbine} lambda {lam:<5g} recon {row['recon']:.4f} (median {row['recon_median']:.4f})  "
                  f"knn_nll {row['knn_nll']:.3f} (target's own {reference:.3f})  spread {row['spread']:.2f}  "
                  f"AUROC L_align / recon: " + ", ".join(f"{y} {v['l_align']:.3f} / {v['recon']:.3f} "
                                                         f"({v['faults']} faults)" for y, v in found.items())
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)

    result = {"confusion": verdict, "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "torch": torch.__version__},
              "settings": {**CORE, "core_steps": args.core_steps, "finetune_steps": args.finetune_steps,
                           "refit_steps": args.refit_steps, "probe_steps": args.probe_steps, "samples": SAMPLES},
              "core": {"heldout_fm": core_fm, "heldout_nll_proxy": core_nll}, "sites": rows, "alignment": alignment,
              "seconds": time.perf_counter() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
