"""Content hashes, shared by checkpoints, the registry, sweeps and data fingerprints (no torch, no Ray)."""

from __future__ import annotations

import hashlib
import json
import os


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(value: object) -> str:
    """SHA-256 (hex) of ``value`` as JSON with sorted keys (what is not JSON as its ``str``): the one digest
    of settings, sweep grids and fingerprint payloads."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
