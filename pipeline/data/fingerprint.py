"""A stable fingerprint of input data: which files, with which bytes, read which way.

``sha256(json({"version": 3, "files": [[name, size, identity], ...], "columns": ..., "options": ...}))``
where ``name`` is relative to the dataset root (so a copied folder keeps its fingerprint) and
``identity`` changes whenever any byte of the file does:

* local disk: ``sha256:...``, the SHA-256 of every byte, read 1 MiB at a time into one buffer; a
  dataset's files are hashed by a pool of threads (hashlib releases the GIL while it hashes).
* S3: the object's ETag (``etag:...``), from the listing, without reading the object. The server
  derives it from the bytes: the MD5 of the object for a single-part upload, the MD5 of the parts'
  MD5s with a ``-<parts>`` suffix for a multipart one (so the same bytes uploaded in other part
  sizes read as other data: a rerun, never a false match). An object listed without an ETag is
  hashed whole, as a local file is (``sha256:...``).

Cost on local disk (``benchmarks/fingerprint_cost.py``, docs/measured.md; a 2-core VM with SHA
instructions): 8 ms for the 15 MB wind-farm file; 0.31 s for a 1 GB folder of 30 files from the
page cache with 2 threads (0.60 s with one, 0.49 s after dropping the files from the guest's cache),
where the sampled scheme took 0.02 s and pyarrow reading every row once takes 0.23 s. A file that
is in no cache costs a read of it from the disk. No cache of hashes keyed by path, size,
modification time and inode: the cost did not call for one, and such a key misses an edit that
keeps all four (a write in place within the file system's timestamp tick, or one whose modification
time is set back, as ``touch -r`` or a sync tool preserving times does).

Versions. The version is part of the hashed payload, so fingerprints of two schemes never coincide:
a record made under an older one reads as "other data" (a named run refuses to reuse its name for
it, a site step runs once more), never as the same data by chance.

1. (2026-11, no ``version`` field) every local byte hashed; the Parquet schema in place of the columns.
2. (2026-11) local files over 1 MiB sampled: 16 evenly spaced 64 KiB slices and the size. It missed
   most edits of a value that keep the file's size (issue #29: 27 of 34 in a 4.2 MB file).
3. (2026-12) every local byte hashed again, in parallel over files; S3 as before (ETags), except an
   object listed without an ETag: hashed whole (it had an empty identity, which no edit changed).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from pipeline.hashing import json_digest

VERSION = 3
CHUNK = 1 << 20  # bytes read (and hashed) at a time
WORKERS = min(8, os.cpu_count() or 1)  # threads hashing a dataset's files


def content_sha256(fs, path: str, chunk: int = CHUNK) -> str:
    """SHA-256 of every byte of ``path`` on the fsspec filesystem ``fs``, read ``chunk`` bytes at a time
    into one buffer (a fresh 8 MiB ``bytes`` per read hashed at 0.74x the speed: allocation, page faults)."""
    h, buffer = hashlib.sha256(), bytearray(chunk)
    view = memoryview(buffer)
    with fs.open(path, "rb") as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem addresses it
    name: str  # relative to the dataset root
    size: int
    content: str  # sha256 (local, or an S3 object listed without an ETag) or etag (S3)
    display: str  # what error messages call it

    @classmethod
    def of(cls, info: dict, root: str, local: bool, fs) -> "SourceFile":
        """From an fsspec ``info`` dict (and its filesystem ``fs``, to hash a local file's bytes)."""
        name, size = info["name"], int(info.get("size") or 0)
        etag = "" if local else str(info.get("ETag") or info.get("etag") or "").strip('"')
        content = "etag:" + etag if etag else "sha256:" + content_sha256(fs, name)
        relative = name[len(root):].lstrip("/") if name.startswith(root) else name
        return cls(name, relative, size, content, name if local else "s3://" + name)


def source_files(infos: Iterable[dict], root: str, local: bool, fs, workers: int = WORKERS) -> list[SourceFile]:
    """``SourceFile.of`` each info, in their order, ``workers`` files at a time (local files are hashed whole)."""
    infos = list(infos)
    if workers <= 1 or len(infos) <= 1:
        return [SourceFile.of(i, root, local, fs) for i in infos]
    with ThreadPoolExecutor(min(workers, len(infos)), thread_name_prefix="fingerprint") as pool:
        return list(pool.map(lambda info: SourceFile.of(info, root, local, fs), infos))


def fingerprint(files: list[SourceFile], columns: list[str], options: dict) -> str:
    """Hex SHA-256 of the scheme's version, the files' identities, the Parquet columns read and the options."""
    payload = {"version": VERSION, "files": [[f.name, f.size, f.content] for f in files], "columns": columns,
               "options": options}
    return json_digest(payload)
