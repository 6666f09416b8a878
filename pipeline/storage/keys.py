"""Store keys and what a listing says about the object under one (shared by the store and its backends).

A key is ``part/part/...``: each part letters, digits and ``._=-``, none empty, ``.``/``..`` or hidden
(a leading dot marks the backends' own temporary files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

TMP_PREFIX = ".tmp-"
KEY_PART = re.compile(r"[A-Za-z0-9._=-]+")
MD5 = re.compile(r"[0-9a-f]{32}")

ByteProgress = Callable[[int, int], None]  # an upload's (bytes done, bytes total)


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


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    md5: str | None  # hex; None where the listing does not say (local disk, multipart uploads, SSE-KMS)
    modified: float | None = None  # unix time of the last write, where the listing says (``list_tree``)
