"""What one prior-fit checkpoint costs rank 0 at every report: the one-file format (#32) beside the four files
Ray Train workers wrote before it, written and read side by side in one run.

    python benchmarks/checkpoint_cost.py [--sizes 256x4 1024x6] [--dim 32] [--repeats 5]

For each network size: a model, its EMA and a fused AdamW with moments after a few steps; then the median of
``--repeats`` writes and reads of (a) ``save_training_state`` / ``load_training_state`` (one safetensors file
with a content digest checked on load, and the SHA-256 of the file) and (b) the old layout
(``model.safetensors``, ``ema.safetensors``, ``optimiser.pt`` via ``torch.save``, ``state.json``; no digest),
written here as the old code did. One process; set ``--threads`` to what a worker has.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from train_step_profile import timed  # median seconds per call after a warm-up

from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.training import new_training, train_step
from pipeline.method.training_state import LEGACY_FILES, load_training_state, save_training_state

from machine import machine  # benchmarks/machine.py, beside this script


def save_legacy(folder: str, model, ema, optimiser, run: dict) -> None:
    """A checkpoint folder as ``prior_fit_worker.save_state`` wrote it before #32."""
    for module, name in ((model, LEGACY_FILES["model"]), (ema.model, LEGACY_FILES["ema"])):
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, os.path.join(folder, name))
    torch.save(optimiser.state_dict(), os.path.join(folder, LEGACY_FILES["optimiser"]))
    with open(os.path.join(folder, LEGACY_FILES["state"]), "w") as f:
        json.dump(run, f)


def measure(width: int, depth: int, dim: int, repeats: int) -> dict:
    velocity, fit = VelocityConfig(dim=dim, width=width, depth=depth), FitConfig(steps=10, warmup=2, batch_size=64)
    model, ema, optimiser = new_training(velocity, fit, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        train_step(model, optimiser, ema, torch.randn(64, dim, generator=generator), step, fit, generator)
    run = {"step": 3, "epoch": 1, "history": [{"step": 3}], "seconds": 1.0, "shards": []}
    params = sum(p.numel() for p in model.parameters())
    out = {"width": width, "depth": depth, "dim": dim, "parameters": params}
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as four:
        out["write_one_file_s"] = timed(lambda: save_training_state(one, model, ema, optimiser, run), repeats)
        out["write_four_files_s"] = timed(lambda: save_legacy(four, model, ema, optimiser, run), repeats)
        out["read_one_file_s"] = timed(lambda: load_training_state(one, model, ema, optimiser), repeats)
        out["read_four_files_s"] = timed(lambda: load_training_state(four, model, ema, optimiser), repeats)
        out["bytes_one_file"] = sum(f.stat().st_size for f in Path(one).iterdir())
        out["bytes_four_files"] = sum(f.stat().st_size for f in Path(four).iterdir())
    out["write_ratio"] = out["write_one_file_s"] / out["write_four_files_s"]
    out["read_ratio"] = out["read_one_file_s"] / out["read_four_files_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x4", "1024x6"], help="WIDTHxDEPTH of the velocity MLP")
    parser.add_argument("--dim", type=int, default=32, help="latent dimension (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/checkpoint_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(*map(int, size.split("x")), args.dim, args.repeats) for size in args.sizes]
    for r in rows:
        print(f"{r['width']}x{r['depth']} ({r['parameters']:,} parameters): write {r['write_one_file_s']:.3f} s "
              f"one file vs {r['write_four_files_s']:.3f} s four files ({r['write_ratio']:.2f}x); read "
              f"{r['read_one_file_s']:.3f} s vs {r['read_four_files_s']:.3f} s ({r['read_ratio']:.2f}x); "
              f"{r['bytes_one_file'] / 2**20:.1f} MiB vs {r['bytes_four_files'] / 2**20:.1f} MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "machine": machine(), "threads": args.threads}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
