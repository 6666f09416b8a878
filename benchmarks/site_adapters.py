"""Site priors as adapters of the core against full fine-tunes: held-out gain kept, bytes, step cost, memory.

    python benchmarks/site_adapters.py [--sizes 128x3 1024x6] [--core-steps 2000 1000] [--steps 500 150]
                                       [--ranks 8] [--alphas 32] [--lr 3e-4] [--big-sites 8]

On the sites of ``benchmarks/site_decisions.py`` (the four real turbines' 2015 rows, one turbine's own 2014
rows, its derated, permuted, shifted, one-regime and one-season rows, and the pool of clearly different
groups with its own core), in one process (the method library, no Ray), for each core size ``WIDTHxDEPTH``:

1. fit the core on the pooled rows (the demo's space: PCA to 7 dimensions, per-dim normaliser);
2. for each site, the check's decision with a probe of the default method (``fm_ratio`` and ``probe_gain``;
   the kNN and MMD diagnostics are left out), then at equal steps and lr a full fine-tune and an adapter per
   ``--ranks`` x ``--alphas``: the held-out FM loss on the site of reusing the core, of each fine-tune, and
   the share of the full fine-tune's gain ``(FM_reuse - FM_adapter) / (FM_reuse - FM_full)`` the adapter keeps;
3. the artifact bytes of each (the full prior's file, the adapter's file), the median time per training step,
   and the training state each holds (weights, gradients, AdamW and EMA state; activations are not counted);
4. the store bytes of 1,000 site priors both ways.

At the larger sizes only the first ``--big-sites`` sites (in the order above, the hard ones first) run.
Goals (issue #33): the adapter keeps >= 90% of the full fine-tune's gain on every site the check sends to
``finetune``; its artifact is <= 2% of the core's bytes at 1024 x 6; a step costs <= the full fine-tune's.
Writes ``benchmarks/results/site_adapters.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.split import split_indices
from pipeline.method.adapter import attach
from pipeline.method.configs import AdapterConfig, FitConfig
from pipeline.method.metrics import heldout_fm
from pipeline.method.prior import FlowPrior
from pipeline.method.training import EMA, make_optimiser, train_step
from pipeline.sites.decision import decide
from pipeline.sites.site_prior import site_fit_config, train_site_prior
from pipeline.sites.spec import FinetuneSettings, Thresholds

from machine import cpu_name
from site_decisions import CORE, core_pool, group_pool, turbine_sites

EVAL_ROWS = 4000  # held-out rows each FM loss is measured on (the same rows, the same noise, for every prior)
HARD_FIRST = ("R80711 2014", "power x0.5", "shifted +3 sd", "group R80711", "group R80721", "high wind", "permuted",
              "winter")


def file_bytes(prior: FlowPrior, adapter: bool) -> int:
    """The bytes of ``prior``'s artifact: its adapter alone, or the whole prior."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prior.safetensors"
        prior.save_adapter(path, {"id": "prior-x", "sha256": "0" * 64}) if adapter else prior.save(path)
        return path.stat().st_size


def step_cost(core: FlowPrior, adapter: AdapterConfig | None, z: torch.Tensor, repeats: int) -> dict:
    """Median seconds per training step (batch 256), and the bytes of training state (unique tensors)."""
    model = (attach(core.velocity, adapter) if adapter else copy.deepcopy(core.velocity).requires_grad_(True)).train()
    fit = site_fit_config(core, "finetune", 100, 3e-4, 256, 100)
    optimiser, ema = make_optimiser(model, fit), EMA(model, fit.ema_decay)
    generator = torch.Generator().manual_seed(0)
    batch = z[torch.randint(0, len(z), (256,), generator=generator)]
    times = []
    for step in range(repeats + 3):
        started = time.perf_counter()
        train_step(model, optimiser, ema, batch, step, fit, generator)
        times.append(time.perf_counter() - started)
    tensors = [*model.parameters(), *ema.model.parameters(),
               *(p.grad for p in model.parameters() if p.grad is not None),
               *(t for state in optimiser.state.values() for t in state.values() if torch.is_tensor(t))]
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return {"step_seconds": float(np.median(times[3:])), "training_state_bytes": sum(unique.values())}


def size_costs(core: FlowPrior, z: torch.Tensor, variants: list[AdapterConfig], repeats: int) -> dict:
    """The core's bytes and parameters; the step cost of a full fine-tune and of each adapter, and its bytes."""
    costs = {"core_bytes": file_bytes(core, adapter=False),
             "parameters": sum(p.numel() for p in core.velocity.parameters()),
             "full": step_cost(core, None, z, repeats)}
    for config in variants:
        fit = site_fit_config(core, "finetune", 2, 3e-4, 256, 2)
        trial = train_site_prior(core, z[:2000], z[:500], "finetune", fit, adapter=config)
        costs[f"rank {config.rank} alpha {config.alpha:g}"] = {
            **step_cost(core, config, z, repeats), "adapter_bytes": file_bytes(trial, adapter=True),
            "adapter_parameters": sum(t.numel() for t in trial.adapter.tensors.values())}
    return costs


def run_site(core: FlowPrior, core_fm: float, name: str, x: np.ndarray, steps: int, args,
             variants: list[AdapterConfig], started: float) -> dict:
    """The check's decision for site rows ``x`` (n, 10) and, at ``steps``, a full fine-tune against each adapter."""
    tr, he = split_indices(x, 0.1, seed=0)
    z_train, z_held = core.to_prior(x[tr]), core.to_prior(x[he][:EVAL_ROWS])
    fm_reuse = heldout_fm(core.velocity, z_held, 0)
    probe_fit = site_fit_config(core, "finetune", FinetuneSettings.probe_steps, args.lr, 256,
                                FinetuneSettings.probe_steps)
    gains = {}  # the check's probe, trained as the adapter (the default) and, where cheap, every weight
    for method, adapter in (("adapter", variants[0]), ("full", None))[:1 if core.velocity.config.width > 128 else 2]:
        probe = train_site_prior(core, z_train, z_held, "finetune", probe_fit, adapter=adapter)
        gains[method] = 1 - probe.info["history"][-1]["heldout_fm"] / fm_reuse
    numbers = {"fm_ratio": fm_reuse / core_fm, "probe_gain": gains["adapter"]}
    fit = site_fit_config(core, "finetune", steps, args.lr, 256, steps)
    full = train_site_prior(core, z_train, z_held, "finetune", fit).info["history"][-1]["heldout_fm"]
    full_probe = {**numbers, "probe_gain": gains["full"]} if "full" in gains else None
    row = {"site": name, "rows": len(x), **numbers, "decision": decide(numbers, Thresholds()),
           "probe_gain_full": gains.get("full"), "decision_full_probe": full_probe and decide(full_probe, Thresholds()),
           "fm_reuse": fm_reuse, "fm_full": full, "adapters": []}
    for config in variants:
        fm = train_site_prior(core, z_train, z_held, "finetune", fit, adapter=config).info["history"][-1]["heldout_fm"]
        kept = (fm_reuse - fm) / (fm_reuse - full) if fm_reuse > full else float("nan")
        row["adapters"].append({**config.to_dict(), "fm": fm, "kept": kept})
    print(f"{name:36s} {row['decision']:8s} probe {numbers['probe_gain']:+.3f} (a full probe: "
          f"{row['decision_full_probe']}) | FM reuse {fm_reuse:.4f} full "
          f"{full:.4f} | " + "  ".join(f"r{a['rank']}/a{a['alpha']:g} {a['fm']:.4f} ({a['kept']:.0%})"
                                     for a in row["adapters"]) + f" ({time.perf_counter() - started:.0f} s)",
          flush=True)
    return row


def run_size(size: str, core_steps: int, steps: int, args, variants: list[AdapterConfig], started: float) -> dict:
    width, depth = map(int, size.split("x"))
    shape = {**CORE, "width": width, "depth": depth}
    sites = [("core", core_pool(), turbine_sites())]
    groups, group_sites = group_pool()
    sites.append(("group core", groups, group_sites))
    if width > 128 or args.only:  # the hard sites first, up to --big-sites; or those --only names
        order = [n for key in args.only or HARD_FIRST for _, _, s in sites for n in s if key in n]
        keep = set(order if args.only else order[:args.big_sites])
        sites = [(c, pool, {n: x for n, x in s.items() if n in keep}) for c, pool, s in sites]
    rows, costs = [], {}
    for core_name, pool, named in sites:
        if not named:
            continue
        tr, he = split_indices(pool, 0.1, seed=0)
        core = FlowPrior.fit(pool[tr], **shape, fit=FitConfig(steps=core_steps, log_every=core_steps), seed=0)
        core_fm = heldout_fm(core.velocity, core.to_prior(pool[he][:EVAL_ROWS]), 0)
        print(f"[{size}] {core_name}: {len(tr)} rows, {core_steps} steps, held-out FM {core_fm:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        if not costs:  # measured on the first core
            costs = size_costs(core, core.to_prior(pool[tr][:10000]), variants, args.repeats)
            print(f"[{size}] " + json.dumps(costs), flush=True)
        rows += [run_site(core, core_fm, name, x, steps, args, variants, started) for name, x in named.items()]
    return {"size": size, "core_steps": core_steps, "steps": steps, "costs": costs, "sites": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128x3", "1024x6"], help="core sizes WIDTHxDEPTH")
    parser.add_argument("--core-steps", type=int, nargs="+", default=[2000, 600], help="per size")
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 150], help="fine-tune steps per size (both ways)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[AdapterConfig.rank])
    parser.add_argument("--alphas", type=float, nargs="+", default=[AdapterConfig.alpha])
    parser.add_argument("--lr", type=float, default=FinetuneSettings.lr, help="both ways (the site spec's)")
    parser.add_argument("--big-sites", type=int, default=4, help="sites run at sizes wider than 128")
    parser.add_argument("--only", nargs="*", default=[], help="only the sites whose names hold one of these")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per cost measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "site_adapters.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    variants = [AdapterConfig(r, a) for r in args.ranks for a in args.alphas]
    sizes = [run_size(size, core_steps, steps, args, variants, started)
             for size, core_steps, steps in zip(args.sizes, args.core_steps, args.steps, strict=True)]
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__}
    result = {"machine": machine, "lr": args.lr, "sizes": sizes, "seconds": time.perf_counter() - started}
    for size in sizes:
        core_bytes = size["costs"]["core_bytes"]
        print(f"[{size['size']}] 1,000 site priors: full {1000 * core_bytes / 1e9:.2f} GB; " + ", ".join(
            f"{k} {1000 * v['adapter_bytes'] / 1e9:.3f} GB + the core ({v['adapter_bytes'] / core_bytes:.2%} each), "
            f"step {v['step_seconds'] / size['costs']['full']['step_seconds']:.2f}x the full fine-tune's"
            for k, v in size["costs"].items() if k.startswith("rank")))
        finetune = [r for r in size["sites"] if r["decision"] == "finetune"]
        for i, config in enumerate(variants):
            kept = [r["adapters"][i]["kept"] for r in finetune]
            print(f"[{size['size']}] rank {config.rank} alpha {config.alpha:g}: keeps >= "
                  f"{min(kept) if kept else float('nan'):.0%} of the full fine-tune's gain on the {len(kept)} sites "
                  "the check sends to finetune")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
