"""Files a validating pass has read before, by content: a refit of the same files does not read them again.

    key = entry_key(scan, source, split, sample)   # the bytes and every setting that shapes their statistics
    arrays = load(store, key)                       # what the pass found in that file, or None
    save(store, key, arrays)

A file's statistics in the core prior fit (training-row moments, held-out rows and sample, digest, rows
dropped: :class:`pipeline.jobs.ingest.FeatureStats`) are a function of its bytes and of how it is read:
the columns, filters, NaN policy, the split and the sample size. The key digests exactly these, with
the file's content identity as the data fingerprint takes it (an S3 ETag, else the SHA-256 of every
byte) and ``VERSION`` (raised whenever reading, checking or hashing rows changes), so an entry stands only
for the bytes it was computed from. A file whose rows fail the checks leaves no entry: it is read, and
its error named, every time. Entries live under ``validated/`` in the store and are ``.npz`` arrays
loaded with ``allow_pickle=False``: nothing in them runs.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.data.fingerprint import SourceFile
from pipeline.data.scan import FeatureScan
from pipeline.data.split import Split
from pipeline.hashing import json_digest
from pipeline.storage import Store
from pipeline.storage.errors import AlreadyExists
from pipeline.storage.layout import VALIDATED

VERSION = 1


def entry_key(scan: FeatureScan, source: SourceFile, split: Split, sample: int) -> str:
    """The store key of ``source``'s statistics when read as ``scan`` reads it, split by ``split``."""
    payload = {"version": VERSION, "content": source.content, "size": source.size,
               "columns": list(scan.read_columns), "list_column": scan.list_column, "filters": scan.filters,
               "drop_nonfinite": scan.drop_nonfinite, "dtypes": list(scan.read_dtypes),
               "shape": list(scan.shape or ()), "split": [split.heldout_fraction, split.seed], "sample": sample}
    return f"{VALIDATED}/{json_digest(payload)}.npz"


def load(store: Store, key: str) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``key``, or None if there are none."""
    try:
        data = store.read(key)
    except FileNotFoundError:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def save(store: Store, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Keep ``arrays`` at ``key`` (create-if-absent: a concurrent pass that saved the same file first wins,
    with the same content)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        store.create(key, buffer.getvalue())
    except AlreadyExists:
        pass
