"""S3 access through s3fs: where endpoint and credentials come from, and failing fast.

Endpoint and credentials come the standard way (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles). ``S3Options``
overrides the endpoint or profile and sets tight timeouts: with botocore's defaults a hung
server stalls a client for minutes; here a dead server is an error within seconds.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Iterable

from pipeline.errors import SpecError, StoreError
from pipeline.storage.errors import BucketMissing
from pipeline.storage.keys import MD5, ByteProgress, ObjectInfo

ENV_PREFIX = "FLOWPRIOR_S3_"


@dataclass(frozen=True)
class S3Options:
    """Client settings; each field can also come from ``FLOWPRIOR_S3_<FIELD>`` (upper case)."""

    endpoint_url: str | None = None  # overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    profile: str | None = None  # an AWS profile name from ~/.aws/config
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 20.0  # seconds without a byte from the server
    retries: int = 2  # attempts per request in all (1 = no retry)

    def __post_init__(self) -> None:
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise SpecError(f"S3 timeouts must be > 0, got connect={self.connect_timeout} read={self.read_timeout}")
        if self.retries < 1:
            raise SpecError(f"S3 retries must be >= 1 (attempts per request), got {self.retries}")

    @classmethod
    def from_env(cls, **overrides: object) -> "S3Options":
        """Defaults, then ``FLOWPRIOR_S3_*`` variables, then ``overrides`` that are not None."""
        values: dict[str, object] = {}
        for f in fields(cls):
            text = os.environ.get(ENV_PREFIX + f.name.upper())
            if text:
                try:
                    values[f.name] = text if f.name in ("endpoint_url", "profile") else (
                        int(text) if f.name == "retries" else float(text))
                except ValueError:
                    raise SpecError(f"{ENV_PREFIX + f.name.upper()}={text!r} is not a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def filesystem(self):
        """A new ``s3fs.S3FileSystem`` with these settings and no listings cache (CAS needs fresh lists).

        Retries happen in one place only, botocore: ``total_max_attempts`` counts the first attempt
        (its ``max_attempts`` would count retries only), and s3fs's own retry loop is set to a single
        pass, since the two multiply. So a request to a hung server ends after at most
        ``retries x (connect_timeout + read_timeout)`` plus botocore's short backoff.
        """
        import s3fs
        from botocore.handlers import add_expect_header

        fs = s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url, profile=self.profile, use_listings_cache=False, skip_instance_cache=True,
            config_kwargs={"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                           "retries": {"total_max_attempts": self.retries, "mode": "standard"}})
        fs.retries = 1  # s3fs's own loop: one pass (an attribute: the constructor rejects it)
        fs.connect()  # the client now, so that its handlers can be changed
        # botocore asks for "100-continue" on uploads, and aiohttp waits for that interim answer with
        # no timeout: a hung server would stall every write forever. Send the body straight away.
        fs.s3.meta.events.unregister("before-call.s3", add_expect_header)
        # Listings: botocore parses every key's LastModified with dateutil, most of a 10,000-key listing's
        # time. Its parsers come from the session's factory, per response, so this applies from now on
        # (in this process: a pickled filesystem, e.g. Ray Train's storage, is rebuilt from its arguments).
        fs.session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=iso_timestamp)
        return fs


def iso_timestamp(value: str) -> datetime:
    """A timestamp of an S3 answer: ISO 8601 by the fast C parser, anything else by botocore's own."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

        return DEFAULT_TIMESTAMP_PARSER(value)


def is_precondition_failed(error: BaseException) -> bool:
    """True for a create-if-absent / if-match refusal in either shape s3fs surfaces.

    AWS and moto give ``FileExistsError``; servers whose 412 lacks a ``Condition`` field
    (SeaweedFS) give a plain ``OSError`` whose cause is a botocore ``ClientError``
    ``PreconditionFailed`` (or code ``412``).
    """
    if isinstance(error, FileExistsError):
        return True
    cause = error.__cause__ or error.__context__
    response = getattr(cause, "response", None) or getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412") or status == 412


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

    def put_file(self, key: str, path: Path, progress: ByteProgress | None) -> None:
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
