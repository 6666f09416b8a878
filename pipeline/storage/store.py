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
import re
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.errors import SpecError, StoreError
from pipeline.storage.errors import AlreadyExists, BucketMissing
from pipeline.storage.s3 import S3Options, is_precondition_failed
from pipeline.storage.uris import split_uri

DEFAULT_STORE = "./flowprior-store"
STORE_ENV = "FLOWPRIOR_STORE"
TMP_PREFIX = ".tmp-"
KEY_PART = re.compile(r"[A-Za-z0-9._=-]+")
MD5 = re.compile(r"[0-9a-f]{32}")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def check_key(key: str) -> str:
    """A key is ``part/part/...`` with safe parts: no empty, ``.``/``..`` or hidden parts."""
    parts = key.split("/")
    if not key or any(not KEY_PART.fullmatch(p) or p.startswith(".") for p in parts):
        raise ValueError(f"invalid store key {key!r}")
    return key


def usable(name: str) -> bool:
    """Whether a name that a listing returned can be one part of a key (see :func:`check_key`): a copy a
    person or a sync tool made (``prior-x (1).json``) cannot, and readers skip it instead of failing."""
    return bool(KEY_PART.fullmatch(name)) and not name.startswith(".")


class Store:
    """A store location plus the backend that reads and publishes its objects."""

    def __init__(self, uri: str, backend: "LocalBackend | S3Backend") -> None:
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

    def put_file(self, key: str, path: str | os.PathLike, progress: Progress | None = None) -> None:
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


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    md5: str | None  # hex; None where the listing does not say (local disk, multipart uploads, SSE-KMS)
    modified: float | None = None  # unix time of the last write, where the listing says (``list_tree``)


class LocalBackend:
    """A folder on local disk (or a shared POSIX filesystem with working hard links)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _publish(self, key: str, write: Callable[[Path], None]) -> None:
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # atomic, and fails if ``final`` exists: create-if-absent
            except FileExistsError:
                raise AlreadyExists(f"{final}: already exists") from None
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, key: str, data: bytes) -> None:
        self._publish(key, lambda tmp: tmp.write_bytes(data))

    def put_file(self, key: str, path: Path, progress: Progress | None) -> None:
        total = path.stat().st_size

        def copy(tmp: Path) -> None:
            done = 0
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(8 << 20), b""):
                    dst.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)

        self._publish(key, copy)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def read_many(self, keys: list[str]) -> list[bytes]:
        return [self.read(k) for k in keys]

    def get_file(self, key: str, path: Path) -> None:
        path.write_bytes(self.read(key))

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def delete_many(self, keys: list[str], prune_below: str | None) -> None:
        for key in keys:
            self.delete(key)
        top = self.root / prune_below if prune_below else None
        for folder in sorted({(self.root / k).parent for k in keys}, key=lambda p: len(p.parts), reverse=True):
            while top is not None and folder != top and folder.is_relative_to(top):
                try:
                    folder.rmdir()  # only if empty
                except OSError:
                    break
                folder = folder.parent

    def list(self, prefix: str) -> Iterable[str]:
        return list(self.list_details(prefix))

    def list_details(self, prefix: str) -> dict[str, ObjectInfo]:
        folder = self.root / prefix
        if not folder.is_dir():
            return {}
        found = {}
        with os.scandir(folder) as entries:
            for e in entries:
                if not e.name.startswith("."):
                    try:
                        found[e.name] = ObjectInfo(e.stat().st_size if e.is_file() else 0, None)
                    except FileNotFoundError:
                        pass  # deleted since the folder was read (e.g. by a gc): not there
        return found

    def list_tree(self, prefix: str) -> dict[str, ObjectInfo]:
        folder, found = self.root / prefix, {}
        for parent, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    path = Path(parent) / name
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue  # deleted since its folder was read
                    found[path.relative_to(folder).as_posix()] = ObjectInfo(stat.st_size, None, stat.st_mtime)
        return found


_CLIENTS: dict[tuple, object] = {}  # this process's S3 clients of unpickled stores, by options and credentials
_CLIENTS_LOCK = threading.Lock()
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def shared_filesystem(options: S3Options):
    """This process's client for ``options`` and the AWS settings in its environment now, made once."""
    key = (options, *(os.environ.get(name) for name in CREDENTIAL_ENV))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = options.filesystem()
        return _CLIENTS[key]


class S3Backend:
    """``bucket/prefix`` on an S3-compatible server, through s3fs."""

    def __init__(self, root: str, options: S3Options) -> None:
        self.root, self.options = root, options
        self._fs = None
        self._shared = False  # whether to take this process's client for these options (see __setstate__)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}  # a Ray task or worker opens its own client from the options

    def __setstate__(self, state: dict) -> None:
        # Unpickled in a Ray worker, once per task: the worker's tasks share one client per options and
        # credentials, instead of each task building its own (a client costs more than a site step's requests)
        self.__dict__.update(state, _shared=True)

    @property
    def fs(self):
        if self._fs is None:
            self._fs = shared_filesystem(self.options) if self._shared else self.options.filesystem()
        return self._fs

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def _missing_bucket(self) -> BucketMissing | None:
        """A ``BucketMissing`` if the bucket does not exist (S3 answers 404 alike for a missing bucket
        and an empty prefix; only ``HeadBucket`` tells them apart)."""
        try:
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except FileNotFoundError:
            return BucketMissing(f"bucket {self.bucket!r} does not exist at this endpoint (create it, or check "
                                 "the store URI and the S3 endpoint)")
        return None

    @contextmanager
    def _writing(self, key: str):
        """A write's 'not found' means the bucket is missing (said so), or a server error."""
        try:
            yield
        except FileNotFoundError:
            raise self._missing_bucket() or StoreError(f"{key}: the server answered 'not found' to a write") from None

    def create(self, key: str, data: bytes) -> None:
        with self._writing(key):
            self.fs.pipe_file(self._path(key), data, mode="create")

    def put_file(self, key: str, path: Path, progress: Progress | None) -> None:
        from fsspec.callbacks import Callback

        class Report(Callback):
            def call(self, *args, **kwargs):
                if progress and self.size:
                    progress(self.value, self.size)

        with self._writing(key):
            self.fs.put_file(str(path), self._path(key), callback=Report(), mode="create",
                             chunksize=8 << 20, max_concurrency=4)

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key), max_concurrency=1)  # one GET (no HEAD for a concurrent read)

    def read_many(self, keys: list[str]) -> list[bytes]:
        paths = [self._path(k) for k in keys]
        if not paths:
            return []
        found = self.fs.cat(paths, on_error="return", batch_size=64, max_concurrency=1)
        out = []
        for path in paths:
            value = found.get(path)
            if isinstance(value, BaseException):
                raise value
            out.append(value)
        return out

    def get_file(self, key: str, path: Path) -> None:
        self.fs.get_file(self._path(key), str(path))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def delete_many(self, keys: list[str], prune_below: str | None) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a request
            self.fs.rm([self._path(k) for k in keys[start:start + 1000]])

    def list(self, prefix: str) -> Iterable[str]:
        return list(self.list_details(prefix))

    def list_details(self, prefix: str) -> dict[str, ObjectInfo]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=True, refresh=True)
        except FileNotFoundError:
            missing = self._missing_bucket()
            if missing:
                raise missing from None
            return {}
        found, folder = {}, self._path(prefix).rstrip("/")
        for entry in entries:
            if entry["name"].rstrip("/") == folder:
                continue  # the folder's own marker (SeaweedFS lists one once the folder's last object is deleted)
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith("."):
                etag = str(entry.get("ETag") or "").strip('"').lower()
                found[name] = ObjectInfo(int(entry.get("size") or 0), etag if MD5.fullmatch(etag) else None)
        return found

    def list_tree(self, prefix: str) -> dict[str, ObjectInfo]:
        base = self._path(prefix).rstrip("/") + "/"
        try:
            entries = self.fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        found = {}
        for path, entry in entries.items():
            key = path[len(base):] if path.startswith(base) else None
            if key and not any(part.startswith(".") for part in key.split("/")):
                modified, etag = entry.get("LastModified"), str(entry.get("ETag") or "").strip('"').lower()
                found[key] = ObjectInfo(int(entry.get("size") or 0), etag if MD5.fullmatch(etag) else None,
                                        modified.timestamp() if modified is not None else None)
        return found
