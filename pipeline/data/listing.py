"""Finding a feature table's Parquet files: a file, a folder searched recursively or a glob, on local disk
or S3, with hidden and temporary paths (any part below the dataset root starting with ``.`` or ``_``:
``_temporary/``, ``_SUCCESS``, ``.part-0.crc``) skipped, as Spark and Hive writers expect."""

from __future__ import annotations

import os

import fsspec

from pipeline.data.fingerprint import SourceFile, source_files
from pipeline.errors import DataError
from pipeline.storage.s3 import S3Options
from pipeline.storage.uris import split_uri


def filesystem_of(uri: str, s3: S3Options | None):
    """(fsspec filesystem, path without scheme, whether it is local disk)."""
    try:
        parts = split_uri(uri, "features")
    except ValueError as error:
        raise DataError(str(error)) from None
    if parts.scheme == "s3":
        return (s3 or S3Options.from_env()).filesystem(), f"{parts.netloc}{parts.path}".rstrip("/"), False
    path = os.path.abspath(os.path.expanduser(parts.path if parts.scheme == "file" else uri))
    return fsspec.filesystem("file"), path, True


def is_hidden(name: str, root: str) -> bool:
    """Whether any part of ``name`` below ``root`` starts with ``.`` or ``_`` (Spark/Hive's hidden files)."""
    relative = name[len(root):] if name.startswith(root) else name.rsplit("/", 1)[-1]
    return any(part.startswith((".", "_")) for part in relative.strip("/").split("/"))


def list_files(uri: str, fs, path: str, local: bool) -> list[SourceFile]:
    """The Parquet files of ``uri`` (a file, a folder searched recursively, or a glob) with sizes and
    identities (see ``pipeline.data.fingerprint``), sorted by name; hidden and temporary paths skipped."""
    try:
        if any(c in path for c in "*?["):
            root = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
            infos = [fs.info(p) for p in fs.glob(path)]
        elif fs.isdir(path):
            root = path
            infos = [i for i in fs.find(path, detail=True).values() if i["name"].endswith(".parquet")]
        elif fs.exists(path):
            infos, root = [fs.info(path)], path.rsplit("/", 1)[0]
        else:
            raise DataError(f"{uri}: {'no such file or directory' if local else 'no such object or prefix'}")
        infos = [i for i in infos if i.get("type") == "file" and not is_hidden(i["name"], root)]
        return sorted(source_files(infos, root, local, fs), key=lambda f: f.name)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable URI, server gone, no permission
        raise DataError(f"{uri}: cannot list ({type(error).__name__}: {error})") from None
