"""The store: one URI for priors, encoders, reports and the registry.

``./flowprior-store`` (the default), any local path, ``file:///abs/path`` or
``s3://bucket/prefix``. Objects are addressed by keys, ``/``-separated relative paths.

Every write is a *publish*: the object appears whole or not at all, and only if no object of
that key exists yet (create-if-absent), or already holds the same bytes (so a retried write is
idempotent). Local disk writes a hidden temporary file in the target
folder and hard-links it into place (``link`` fails if the name exists, atomically); S3 uses
``PutObject`` / ``CompleteMultipartUpload`` with ``If-None-Match: *`` (an object becomes visible
only when its upload completes). Nothing is ever overwritten, so concurrent writers can race
safely: at most one of them wins each key.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import SpecError, StoreError
from pipeline.storage.errors import AlreadyExists, BucketMissing
from pipeline.storage.keys import ByteProgress, ObjectInfo, check_key
from pipeline.storage.local import LocalBackend
from pipeline.storage.s3 import S3Backend, S3Options, is_precondition_failed
from pipeline.storage.uris import split_uri

DEFAULT_STORE = "./flowprior-store"
STORE_ENV = "FLOWPRIOR_STORE"


class Store:
    """A store location plus the backend that reads and publishes its objects."""

    def __init__(self, uri: str, backend: LocalBackend | S3Backend) -> None:
        self.uri = uri
        self.backend = backend

    @classmethod
    def open(cls, uri: str | None = None, s3: S3Options | None = None) -> "Store":
        """Open ``uri``, else ``$FLOWPRIOR_STORE``, else ``./flowprior-store``. Nothing is created yet."""
        uri = uri or os.environ.get(STORE_ENV) or DEFAULT_STORE
        parts = split_uri(uri, "store URI")
        if parts.scheme == "s3":
            bucket, prefix = parts.netloc, parts.path.strip("/")
            if not bucket:
                raise SpecError(f"store URI {uri!r} names no bucket (expected s3://bucket/prefix)")
            root = f"{bucket}/{prefix}" if prefix else bucket
            return cls(f"s3://{root}", S3Backend(root, s3 or S3Options.from_env()))
        path = Path(os.path.expanduser(parts.path if parts.scheme == "file" else uri)).resolve()  # "~nobody" stays
        return cls(str(path), LocalBackend(path))

    @property
    def is_local(self) -> bool:
        return isinstance(self.backend, LocalBackend)

    def uri_of(self, key: str) -> str:
        return f"{self.uri}/{check_key(key)}"

    def key_of(self, uri: str) -> str | None:
        """The key of ``uri`` inside this store, or None if it lies elsewhere."""
        prefix = self.uri + "/"
        return check_key(uri[len(prefix):]) if uri.startswith(prefix) else None

    def _call(self, op: str, key: str, fn, *args):
        try:
            return fn(*args)
        except BucketMissing as error:
            raise StoreError(f"store {self.uri}: cannot {op} {key or '(root)'}: {error}") from None
        except (AlreadyExists, FileNotFoundError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001 - every other backend failure becomes one clear error
            if not self.is_local and is_precondition_failed(error):
                raise AlreadyExists(f"{self.uri_of(key) if key else self.uri}: already exists") from None
            raise StoreError(f"store {self.uri}: cannot {op} {key or '(root)'}: "
                             f"{type(error).__name__}: {error}") from None

    def create(self, key: str, data: bytes) -> None:
        """Publish ``data`` at ``key`` if no object is there; else raise ``AlreadyExists``.

        Idempotent: if the object already holds exactly ``data``, that is success. A write whose
        reply was lost (the server applied it, the client timed out and retried) then finds its
        own bytes, instead of reporting a conflict that would make the caller write again.
        """
        try:
            self._call("write", key, self.backend.create, check_key(key), data)
        except AlreadyExists:
            try:
                if self.read(key) == data:
                    return
            except FileNotFoundError:
                pass
            raise

    def put_file(self, key: str, path: str | os.PathLike, progress: ByteProgress | None = None) -> None:
        """Publish a local file at ``key`` (create-if-absent), reporting bytes sent to ``progress``."""
        self._call("upload", key, self.backend.put_file, check_key(key), Path(path), progress)

    def read(self, key: str) -> bytes:
        return self._call("read", key, self.backend.read, check_key(key))

    def read_listed(self, folder: str, name: str) -> bytes:
        """Read the object ``name`` that listing ``folder`` returned, even one whose name no key may have
        (see :func:`usable`): for the tools that must see every object, whatever its name (``registry gc``
        and ``registry check``). ``name`` is one path part, so it cannot leave ``folder``."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid object name {name!r} under {folder}")
        key = f"{check_key(folder)}/{name}"
        return self._call("read", key, self.backend.read, key)

    def read_many(self, keys: list[str]) -> list[bytes]:
        """Read many objects (concurrently on S3), in the order of ``keys``."""
        return self._call("read", f"{len(keys)} objects", self.backend.read_many, [check_key(k) for k in keys])

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        self._call("download", key, self.backend.get_file, check_key(key), Path(path))

    def exists(self, key: str) -> bool:
        return self._call("check", key, self.backend.exists, check_key(key))

    def list(self, prefix: str) -> list[str]:
        """Names of the objects directly under ``prefix/`` (sorted; empty if there are none)."""
        return sorted(self._call("list", prefix, self.backend.list, check_key(prefix)))

    def delete(self, key: str) -> None:
        """Remove the object at ``key`` (a missing object is not an error). Records and alias entries are
        never deleted by flowprior; artifacts and run folders only by ``registry gc``."""
        self._call("delete", key, self.backend.delete, check_key(key))

    def delete_many(self, keys: list[str], prune_below: str | None = None) -> None:
        """Remove many objects (in batches of 1,000 on S3); on local disk also the folders they leave empty
        below the folder ``prune_below`` (itself kept: a concurrent publish may be creating a file in it)."""
        self._call("delete", f"{len(keys)} objects", self.backend.delete_many, [check_key(k) for k in keys],
                   None if prune_below is None else check_key(prune_below))

    def list_details(self, prefix: str) -> dict[str, ObjectInfo]:
        """Like :meth:`list`, with each object's size and, where the server reports it, the MD5 of its
        bytes (an S3 ETag of a single-part upload), from the listing alone."""
        return dict(sorted(self._call("list", prefix, self.backend.list_details, check_key(prefix)).items()))

    def list_tree(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix/`` at any depth, by its key relative to ``prefix`` (one flat listing on
        S3: a page per 1,000 objects, however many folders), with size, MD5 (as ``list_details``) and
        last-write time."""
        return dict(sorted(self._call("list", prefix, self.backend.list_tree, check_key(prefix)).items()))

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"
