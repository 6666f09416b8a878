"""A stable fingerprint of input data: which files, of which size and identity, read which way.

``sha256(json({"files": [[name, size, identity], ...], "columns": ..., "options": ...}))`` where
``name`` is relative to the dataset root (so a copied folder keeps its fingerprint) and
``identity`` is what the storage can say cheaply, without reading the data:

* S3: the object's ETag (``etag:...``), from the listing;
* local disk: ``sampled-sha256:...``, the SHA-256 of the file's size and of up to 16 evenly spaced
  64 KiB slices, always including the first and the last (the Parquet footer, which holds every
  column chunk's offsets, sizes and statistics). A file up to 1 MiB is hashed whole. Reading 1 MiB
  per file instead of every byte keeps a fingerprint of a fleet's files to seconds.

Records made before this scheme (version 2, 2026-11) hashed local files whole and named the list
column's elements; their fingerprints differ from today's for the same data, so comparing
fingerprints across that change says "different data". Compare records of one scheme.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

SLICE = 64 << 10
SLICES = 16


def sampled_sha256(fs, path: str, size: int) -> str:
    """SHA-256 over ``size`` and up to ``SLICES`` evenly spaced ``SLICE``-byte slices of the file."""
    h = hashlib.sha256(str(size).encode())
    with fs.open(path, "rb") as f:
        if size <= SLICES * SLICE:
            h.update(f.read())
        else:
            for i in range(SLICES):
                f.seek((size - SLICE) * i // (SLICES - 1))
                h.update(f.read(SLICE))
    return h.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem addresses it
    name: str  # relative to the dataset root
    size: int
    content: str  # sampled-sha256 (local) or etag (S3)
    display: str  # what error messages call it

    @classmethod
    def of(cls, info: dict, root: str, local: bool, fs) -> "SourceFile":
        """From an fsspec ``info`` dict (and its filesystem ``fs``, for a local file's sampled hash)."""
        name, size = info["name"], int(info.get("size") or 0)
        if local:
            content = "sampled-sha256:" + sampled_sha256(fs, name, size)
        else:
            content = "etag:" + str(info.get("ETag") or info.get("etag") or "").strip('"')
        relative = name[len(root):].lstrip("/") if name.startswith(root) else name
        return cls(name, relative, size, content, name if local else "s3://" + name)


def fingerprint(files: list[SourceFile], columns: list[str], options: dict) -> str:
    """Hex SHA-256 of the files' identities, the Parquet columns read and the reading options."""
    payload = {"version": 2, "files": [[f.name, f.size, f.content] for f in files], "columns": columns,
               "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
