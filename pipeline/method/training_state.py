"""A prior fit's training checkpoint: to continue the run bit for bit, or to take its prior.

One tensor-only file in a checkpoint folder, ``training.safetensors`` (kind ``flowprior.prior-training/v1``,
written by :func:`~pipeline.method.checkpoint.save_training`): the model's and its EMA's weights (``model.*``,
``ema.*``), the optimiser's per-parameter state (``optimiser.*``) with its ``param_groups``
(``optimiser_groups``), the velocity network's shape (``velocity``) and the run's own state (``run``: step,
epoch, history, whatever its loop keeps). Loading runs no code and refuses a changed file.

**Legacy folders.** Before flowprior's #32 refactor a Ray Train worker wrote four files instead:
``model.safetensors``, ``ema.safetensors``, ``optimiser.pt`` (``torch.save`` of the optimiser's state dict)
and ``state.json`` (the run's state), and no network shape. Such a folder still resumes and still gives its
prior (its reader names the shape); ``optimiser.pt`` is read with ``torch.load(weights_only=True)``, which
admits tensors and plain containers only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.errors import CheckpointError
from pipeline.method.checkpoint import load_checkpoint, load_training, save_training
from pipeline.method.configs import VelocityConfig
from pipeline.method.training import EMA
from pipeline.method.velocity import VelocityMLP

KIND = "flowprior.prior-training/v1"
FILE = "training.safetensors"  # the one file of a checkpoint folder
LEGACY_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "optimiser": "optimiser.pt",
                "state": "state.json"}  # a folder written before #32 (see the module docstring)


def save_training_state(folder: str | os.PathLike, model: VelocityMLP, ema: EMA, optimiser: torch.optim.Optimizer,
                        run: dict) -> None:
    """Write ``folder/training.safetensors`` (the module docstring); ``model`` unwrapped (not its DDP
    wrapper)."""
    header = {"velocity": model.config.to_dict(), "run": run}
    save_training(Path(folder) / FILE, KIND, header, {"model": model, "ema": ema.model},
                         {"optimiser": optimiser})


def load_training_state(folder: str | os.PathLike, model: VelocityMLP, ema: EMA,
                        optimiser: torch.optim.Optimizer) -> dict:
    """Restore a checkpoint folder (or a legacy one) into ``model``, ``ema`` and ``optimiser``, built as the
    run that wrote it built them (:func:`~pipeline.method.training.new_training`, on this process's device);
    return the run's state. Every weight and optimiser moment lands beside its parameter."""
    if _is_legacy(folder):
        return _load_legacy(Path(folder), model, ema, optimiser)
    header, _ = load_training(Path(folder) / FILE, KIND, {"model": model, "ema": ema.model}, {"optimiser": optimiser},
                              expect={"velocity": model.config.to_dict()})
    return header["run"]


def trained_velocity(folder: str | os.PathLike,
                     velocity: VelocityConfig | None = None) -> tuple[VelocityMLP, dict]:
    """The EMA network of a checkpoint folder (on the CPU, in eval mode) and the run's state.

    ``velocity``: the network's shape; a legacy folder needs it (it holds none), and a current one is
    refused if it holds another."""
    if _is_legacy(folder):
        if velocity is None:
            raise CheckpointError(f"{folder}: a checkpoint folder from before #32 holds no network shape; "
                                  "pass its velocity config")
        weights, run = load_file(str(Path(folder) / LEGACY_FILES["ema"])), _legacy_run(Path(folder))
    else:
        header, tensors = load_checkpoint(Path(folder) / FILE, KIND)
        saved = VelocityConfig(**header["velocity"])
        if velocity is not None and velocity != saved:
            raise CheckpointError(f"{folder}: the checkpoint's network is {saved}, not {velocity}")
        velocity, run = saved, header["run"]
        weights = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
    model = VelocityMLP(velocity)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{folder}: its EMA weights do not fit {velocity} ({error})") from None
    return model.eval(), run


def _is_legacy(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    if (folder / FILE).is_file():
        return False
    if (folder / LEGACY_FILES["state"]).is_file():
        return True
    raise CheckpointError(f"{folder}: no training checkpoint here (neither {FILE} nor a legacy "
                          f"{LEGACY_FILES['state']})")


def _legacy_run(folder: Path) -> dict:
    with open(folder / LEGACY_FILES["state"]) as f:
        return json.load(f)


def _load_legacy(folder: Path, model: VelocityMLP, ema: EMA, optimiser: torch.optim.Optimizer) -> dict:
    """Restore a legacy folder (the module docstring), every tensor read straight onto the model's device."""
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(folder / LEGACY_FILES["model"]), device=str(device)))
    ema.model.load_state_dict(load_file(str(folder / LEGACY_FILES["ema"]), device=str(device)))
    optimiser.load_state_dict(torch.load(folder / LEGACY_FILES["optimiser"], map_location=device, weights_only=True))
    return _legacy_run(folder)
