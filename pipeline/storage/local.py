"""The local backend: a folder on disk, objects published by hard-linking a finished temporary file."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterable

from pipeline.storage.errors import AlreadyExists
from pipeline.storage.keys import TMP_PREFIX, ByteProgress, ObjectInfo


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

    def put_file(self, key: str, path: Path, progress: ByteProgress | None) -> None:
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
