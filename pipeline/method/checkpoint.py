"""Tensor-only checkpoints: safetensors files with a JSON header and a content digest.

Loading never executes code (safetensors holds raw tensors and strings). Each file carries
``digest``, a SHA-256 over its config and tensors, which loading recomputes: a file changed
after it was written is refused. To guard against a deliberate forgery (which could also
rewrite the digest), pass the file hash recorded elsewhere (the registry) as
``expected_sha256``.

A *training* checkpoint (:func:`save_training`, :func:`load_training`) is one such file for a run to
continue bit for bit: every training loop (a prior fit on Ray, an encoder's training) writes its modules,
optimisers and state this one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.hashing import file_sha256


def optimiser_tensors(optimiser: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimiser's per-parameter state as flat tensors ``{prefix}.{index}.{name}`` (for a tensor-only
    checkpoint), and its ``param_groups`` (JSON: save them in the config)."""
    state = optimiser.state_dict()
    tensors = {f"{prefix}.{i}.{name}": value.detach().cpu().contiguous()
               for i, entry in state["state"].items() for name, value in entry.items()}
    return tensors, state["param_groups"]


def load_optimiser(optimiser: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str,
                   groups: list[dict]) -> None:
    """Restore what :func:`optimiser_tensors` wrote (other keys in ``tensors`` are ignored)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimiser.load_state_dict({"state": state, "param_groups": groups})


def content_digest(kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the kind, the canonical JSON of ``config`` and every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # 0-dim too; hashed in place
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """Write atomically (temporary file, then rename); return the file's SHA-256."""
    write_checkpoint(path, kind, config, tensors)
    return file_sha256(path)


def write_checkpoint(path: str | os.PathLike, kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """:func:`save_checkpoint` without reading the file back for its hash (a training checkpoint, written at
    every report of a run, needs none: its content digest guards it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"kind": kind, "config": json.dumps(config, sort_keys=True),
                "digest": content_digest(kind, config, tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(
    path: str | os.PathLike, kind: str, expected_sha256: str | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(config, tensors)``; refuse a wrong kind, a changed file or a hash mismatch."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"{path}: file hash does not match the recorded {expected_sha256[:12]}...; "
                              "refusing to load")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({error})") from None
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{path}: expected a {kind!r} checkpoint, found {metadata.get('kind')!r}")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: checkpoint header has no valid config") from None
    if content_digest(kind, config, tensors) != metadata.get("digest"):
        raise CheckpointError(f"{path}: content does not match its digest (the file was changed); refusing to load")
    return config, tensors


def save_training(
    path: str | os.PathLike,
    kind: str,
    state: dict,
    modules: dict[str, torch.nn.Module],
    optimisers: dict[str, torch.optim.Optimizer],
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a training checkpoint atomically.

    Each module's ``state_dict`` goes in as ``{name}.{key}``, each optimiser's per-parameter state as
    ``{name}.{index}.{field}`` (:func:`optimiser_tensors`) with its ``param_groups`` in the header as
    ``{name}_groups``, beside ``state`` (JSON) and any other ``tensors`` (their names must not start with a
    module's or an optimiser's ``name.``)."""
    header, out = dict(state), {}
    for name, module in modules.items():
        out |= {f"{name}.{key}": value for key, value in module.state_dict().items()}
    for name, optimiser in optimisers.items():
        flat, header[f"{name}_groups"] = optimiser_tensors(optimiser, name)
        out |= flat
    write_checkpoint(path, kind, header, out | (tensors or {}))


def load_training(
    path: str | os.PathLike,
    kind: str,
    modules: dict[str, torch.nn.Module],
    optimisers: dict[str, torch.optim.Optimizer],
    expect: dict | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what :func:`save_training` wrote into ``modules`` and ``optimisers`` (built as when it was
    written: same shapes, and each on its device); return the header (``state`` and the optimisers'
    ``{name}_groups``) and the other tensors (on the CPU).

    Module weights and optimiser moments land beside their parameters (``load_state_dict`` copies them
    there), on a GPU as on a CPU. ``expect``: header entries that make it the same run (settings, seed,
    a network's shape); a file whose entries differ is refused before anything is loaded."""
    state, tensors = load_checkpoint(path, kind)
    theirs = {key: state.get(key) for key in expect or {}}
    if expect is not None and theirs != expect:
        raise CheckpointError(f"{path}: training state is for another run ({theirs}), not {expect}")
    names = tuple(f"{name}." for name in (*modules, *optimisers))
    try:
        for name, module in modules.items():
            module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
        for name, optimiser in optimisers.items():
            load_optimiser(optimiser, tensors, name, state[f"{name}_groups"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: training state does not fit this run ({error})") from None
    return state, {k: v for k, v in tensors.items() if not k.startswith(names)}
