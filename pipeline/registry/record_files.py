"""The record files under ``registry/records/``: one listing, their bytes (a snapshot row where the listing
vouches for it), and bringing the snapshots up to date."""

from __future__ import annotations

import logging

from pipeline.registry import aliases, snapshots
from pipeline.registry.records import record_id_of
from pipeline.storage import ObjectInfo, Store
from pipeline.storage.layout import RECORDS

log = logging.getLogger(__name__)


def listing(store: Store) -> tuple[dict[str, ObjectInfo], list[str]]:
    """One listing of ``registry/records/``: ``{record id: its file's listing}`` for the files named
    ``<record id>.json``, and the other names there (``prior-x (1).json``, a copy a person or a sync
    tool made): every reader skips those, ``registry check`` reports them, ``registry gc`` honours them."""
    files, stray = {}, []
    for name, info in store.list_details(RECORDS).items():
        record_id = record_id_of(name)
        if record_id is None:
            stray.append(name)
        else:
            files[record_id] = info
    return files, stray


def read(store: Store, listed: dict[str, ObjectInfo] | None = None,
         compact_after: int | None = None) -> dict[str, bytes]:
    """``{record id: the bytes of its file}`` for every record file the listing shows (``listed``: one
    :func:`listing` already made; without it, a new one, warning about each name it skips).

    The listing is the truth; a snapshot row is used instead of reading a file only where the
    listing vouches for it (same size, and the MD5 the server reports for the file). Where the
    listing carries no MD5 (local disk) every file is read. When the snapshot lacked ``compact_after``
    records or more (default ``snapshots.COMPACT_AFTER``), a fresh one is written for the next reader."""
    if listed is None:
        listed, stray = listing(store)
        for name in stray:
            log.warning("skipping %s/%s: not a record file name (<record id>.json); `flowprior registry check` "
                        "lists such files", store.uri, f"{RECORDS}/{name}")
    verifiable = any(info.md5 for info in listed.values())
    cached = snapshots.read_latest(store) if verifiable else {}
    raw = snapshots.vouched(cached, listed)
    missing = [i for i in listed if i not in raw]
    raw.update(zip(missing, store.read_many([f"{RECORDS}/{i}.json" for i in missing]), strict=True))
    if verifiable and missing and len(missing) >= (compact_after or snapshots.COMPACT_AFTER):
        snapshots.write(store, raw)
    return {i: raw[i] for i in listed}


def compact(store: Store) -> None:
    """Bring the record and alias snapshots up to date (see ``snapshots``), so that the next reader, however
    cold, reads them and not every record a fleet run just added: what a fleet command does at its end.
    Nothing on local disk, where readers read the files (no listing there vouches for a snapshot)."""
    listed, _ = listing(store)
    if any(info.md5 for info in listed.values()):
        read(store, listed, compact_after=1)
        aliases.current(store, compact_after=1)


def every_file(store: Store) -> dict[str, bytes]:
    """``{name: bytes}`` of every object in ``registry/records/``, whatever its name or content: what
    ``registry gc`` must honour (a record a newer flowprior wrote, a copy under another name)."""
    listed, stray = listing(store)
    files = {f"{i}.json": data for i, data in read(store, listed).items()}
    for name in stray:
        try:
            files[name] = store.read_listed(RECORDS, name)
        except (FileNotFoundError, IsADirectoryError):
            pass  # gone since the listing, or a folder: nothing to honour
    return files
