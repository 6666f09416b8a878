"""Artifacts: the files records point at, published under their content hash and fetched hash-checked."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path

from pipeline.errors import RegistryError
from pipeline.hashing import file_sha256
from pipeline.registry.records import Record
from pipeline.storage import AlreadyExists, ByteProgress, Store, check_key
from pipeline.storage.layout import ARTIFACTS

log = logging.getLogger(__name__)


class IntegrityError(RegistryError):
    """An artifact whose bytes do not match the hash its record holds (tampered or corrupted)."""


def publish(store: Store, path: Path, digest: str, progress: ByteProgress | None = None) -> str:
    """Publish the file (SHA-256 ``digest``) under its content hash and return its key. If that key already
    holds other bytes (a planted or corrupted object; nothing is ever overwritten), publish beside it."""
    suffix = "".join(path.suffixes[-1:])
    key = f"{ARTIFACTS}/{digest}{suffix}"
    try:
        store.put_file(key, path, progress)
        return key
    except AlreadyExists:
        if object_sha256(store, key) == digest:
            return key  # the same bytes are already published (keys are content hashes)
    other = f"{ARTIFACTS}/{digest}-{secrets.token_hex(4)}{suffix}"
    log.warning("store %s: %s holds bytes that do not match its name; publishing the artifact as %s "
                "(`flowprior registry check` lists such objects)", store.uri, key, other)
    store.put_file(other, path, progress)
    return other


def object_sha256(store: Store, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store.get_file(key, Path(tmp) / "object")
        return file_sha256(Path(tmp) / "object")


def key_of(store: Store, record: Record) -> str:
    """The store key of ``record``'s artifact. Records hold keys; older ones hold absolute URIs, which are
    read as keys from their ``artifacts/`` part on, so a copied or re-mounted store still loads (the hash
    check guards what is read)."""
    artifact = record.artifact or ""
    if artifact.startswith(f"{ARTIFACTS}/"):
        return check_key(artifact)
    key = store.key_of(artifact)
    if key is None and f"/{ARTIFACTS}/" in artifact:
        key = f"{ARTIFACTS}/{artifact.rsplit(f'/{ARTIFACTS}/', 1)[1]}"
    try:
        return check_key(key or "")
    except ValueError:
        raise RegistryError(f"record {record.id}: cannot find its artifact {artifact!r} in the store "
                            f"{store.uri}") from None


def fetch(store: Store, record: Record, path: str | os.PathLike) -> Path:
    """Download ``record``'s artifact to ``path`` and check its hash; refuse a mismatch."""
    if record.artifact is None:
        raise RegistryError(f"record {record.id} has no artifact")
    path, key = Path(path), key_of(store, record)
    try:
        store.get_file(key, path)
    except FileNotFoundError:
        raise IntegrityError(f"record {record.id}: artifact {store.uri_of(key)} is missing") from None
    found = file_sha256(path)
    if found != record.hash:
        path.unlink()
        raise IntegrityError(f"record {record.id}: artifact {store.uri_of(key)} has SHA-256 {found[:12]}... "
                             f"but the registry recorded {record.hash[:12]}...; it was changed after publishing, "
                             "refusing it")
    return path
