"""Where the registry keeps what, below the store's root (one place, so no module restates a folder)."""

from pipeline.storage.names import NAME_PATTERN

RECORDS = "registry/records"  # <record id>.json, immutable
ARTIFACTS = "artifacts"  # <sha256>.<ext>: the bytes records point at, by content


def record_id_of(name: str) -> str | None:
    """The record id a file name in ``RECORDS`` says (``<id>.json``), or None if no record's file can have
    that name (``prior-x (1).json``: a copy a person or a sync tool made)."""
    stem = name.removesuffix(".json")
    return stem if stem != name and NAME_PATTERN.fullmatch(stem) and ".." not in stem else None
