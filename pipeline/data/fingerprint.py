"""A stable fingerprint of input data: which files, with which bytes, read which way.

``sha256(json({"files": [[name, size, content], ...], "schema": ..., "options": ...}))`` where
``name`` is relative to the dataset root (so a copied folder keeps its fingerprint), and
``content`` is the file's SHA-256 on local disk and its ETag on S3.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.hashing import file_sha256


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem addresses it
    name: str  # relative to the dataset root
    size: int
    content: str  # sha256 (local) or etag (S3)
    display: str  # what error messages call it

    @classmethod
    def of(cls, info: dict, root: str, local: bool) -> "SourceFile":
        """From an fsspec ``info`` dict: content is the file's SHA-256 on local disk, its ETag on S3."""
        name = info["name"]
        if local:
            content = "sha256:" + file_sha256(name)
        else:
            content = "etag:" + str(info.get("ETag") or info.get("etag") or "").strip('"')
        relative = name[len(root):].lstrip("/") if name.startswith(root) else name
        return cls(name, relative, int(info.get("size") or 0), content, name if local else "s3://" + name)


def fingerprint(files: list[SourceFile], schema: list[tuple[str, str]], options: dict) -> str:
    """Hex SHA-256 of the files' identities, the schema used and the reading options."""
    payload = {"files": [[f.name, f.size, f.content] for f in files], "schema": schema, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
