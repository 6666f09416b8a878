"""Snapshots: many records gathered into one Parquet object, so ``ls`` reads one object, not 10,000.

Alias entries (immutable too) are cached the same way under ``registry/alias-snapshots/``, with
``id`` the entry's key below ``registry/aliases/`` (``<alias>/<version>.json``): ``fleet status``
then reads one object, not the latest entry of 3,000 aliases.

Records stay the source of truth (immutable JSON objects under ``registry/records/``). A snapshot
``registry/snapshots/<count>-<digest>.parquet`` (columns ``id`` and ``record``, the record's JSON
bytes unchanged; ``digest`` covers both, and a snapshot that does not match it is ignored) is a
cache of some of them. Records never change, so a snapshot never goes
stale: a reader takes the largest one and fetches only the records it lacks. Snapshots are
written create-if-absent like everything else, so concurrent compactions are harmless.
"""

from __future__ import annotations

import hashlib
import io
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StoreError
from pipeline.storage import AlreadyExists, ObjectInfo, Store, usable
from pipeline.storage.layout import SNAPSHOTS

COMPACT_AFTER = 256  # records missing from the latest snapshot before a reader writes a new one

log = logging.getLogger(__name__)


def read_latest(store: Store, folder: str = SNAPSHOTS) -> dict[str, bytes]:
    """``{record id: record JSON}`` of the largest snapshot in ``folder`` ({} if there is none)."""
    names = [n for n in store.list(folder) if n.endswith(".parquet") and usable(n)]
    if not names:
        return {}
    name = max(names)
    try:
        table = read_snapshot(store.read(f"{folder}/{name}"))
        records = dict(zip(table["id"].to_pylist(), table["record"].to_pylist(), strict=True))
    except (pa.ArrowException, KeyError) as error:
        records, name = {}, f"{name} ({error})"
    if name != name_of(records):
        log.warning("ignoring registry snapshot %s: its content does not match its name", name)
        return {}
    return records


def read_snapshot(data: bytes) -> pa.Table:
    """A snapshot's table. Single-threaded: pyarrow 26's threaded read of an in-memory file makes the
    process abort at exit about one run in three ("terminate called without an active exception")."""
    return pq.read_table(io.BytesIO(data), use_threads=False)


def name_of(records: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for i in sorted(records):
        h.update(i.encode() + b"\0" + records[i] + b"\0")
    return f"{len(records):010d}-{h.hexdigest()[:32]}.parquet"


def vouched(cached: dict[str, bytes], listing: dict[str, ObjectInfo]) -> dict[str, bytes]:
    """The cached rows the listing vouches for: the object is listed with the same size and the MD5 the
    server reports for it (an object without a listed MD5 is never taken from a cache)."""
    return {i: cached[i] for i, info in listing.items() if i in cached and info.md5 is not None
            and info.size == len(cached[i]) and hashlib.md5(cached[i]).hexdigest() == info.md5}


def write(store: Store, records: dict[str, bytes], folder: str = SNAPSHOTS) -> None:
    """Publish a snapshot of ``records``; a failure only costs speed, so it is logged, not raised."""
    ids = sorted(records)
    table = pa.table({"id": pa.array(ids, pa.string()), "record": pa.array([records[i] for i in ids], pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    try:
        store.create(f"{folder}/{name_of(records)}", buffer.getvalue())
    except AlreadyExists:
        pass  # another reader published the same snapshot
    except StoreError as error:  # e.g. read-only credentials: reading still works, just slower
        log.warning("could not write a registry snapshot: %s", error)
