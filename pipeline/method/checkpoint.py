"""Tensor-only checkpoints: safetensors files with a JSON header and a content digest.

Loading never executes code (safetensors holds raw tensors and strings). Each file carries
``digest``, a SHA-256 over its config and tensors, which loading recomputes: a file changed
after it was written is refused. To guard against a deliberate forgery (which could also
rewrite the digest), pass the file hash recorded elsewhere (the registry) as
``expected_sha256``.
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
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """Write atomically (temporary file, then rename); return the file's SHA-256."""
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
    return file_sha256(path)


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
