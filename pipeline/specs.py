"""Typed settings from YAML, validated once at the edge: the helpers site and sweep specs share.

A spec section is a mapping onto a frozen dataclass: an unknown key, a wrong type or a value the
dataclass refuses is a ``SpecError`` whose message names the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pipeline.errors import SpecError

MAX_SPEC_BYTES = 1 << 20  # a spec is settings, not data


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML would keep the last one silently) and reads
    ``1e-3`` as a float, as YAML 1.2 and every other tool does (YAML 1.1 needs ``1.0e-3``)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):  # `? [a, b]`: YAML allows it, no setting is named so
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a name, not a {type(key).__name__}"
                                                        f" ({key!r:.40})", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_mapping(path: Path, what: str) -> dict:
    """The YAML mapping in ``path`` (``what``: "site spec", "sweep spec" for the messages)."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {size:,} bytes is too large for a {what} (at most {MAX_SPEC_BYTES:,})")
        data = yaml.load(path.read_text(), Loader=SpecLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise SpecError(f"{path}: not readable YAML ({error})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


SCALARS = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}


def typed(value: Any, kind: str, where: str) -> Any:
    """``value`` checked against a field's annotation ``kind``: a scalar, ``dict``,
    ``tuple[int|str, ...]``, or any of those ``| None``."""
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise SpecError(f"{where}: a value is required")
    if kind.startswith("tuple["):
        if not isinstance(value, list) or not value:
            raise SpecError(f"{where}: expected a non-empty list, got {value!r}")
        inner = kind[len("tuple["):].split(",")[0]
        return tuple(typed(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    python = SCALARS[kind]
    if python is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, python) or (python is int and isinstance(value, bool)):
        raise SpecError(f"{where}: expected {kind}, got {value!r:.80}")
    if python is float and not math.isfinite(value):
        raise SpecError(f"{where}: expected a finite number, got {value!r}")
    return value


def section(cls: type, data: Any, where: str, renames: dict[str, str] | None = None) -> Any:
    """Build dataclass ``cls`` from a YAML mapping: unknown keys, wrong types and bad values are errors."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {data!r}")
    renames = renames or {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        name = renames.get(key, key)
        if name not in hints:
            spelled = {v: k for k, v in renames.items()}
            known = sorted(spelled.get(h, h) for h in hints)
            raise SpecError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        values[name] = typed(value, hints[name], f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise SpecError(f"{where}: {error}") from None


def resolve(uri: str, base: Path) -> str:
    """A relative local path is taken relative to the spec's folder; URIs stay as they are."""
    if urlsplit(uri).scheme or os.path.isabs(os.path.expanduser(uri)):
        return uri
    return str((base / uri).resolve())


