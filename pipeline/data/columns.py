"""Which Parquet columns can hold features: numbers, or one list column of numbers (vectors); by default
every numeric column but ``DEFAULT_EXCLUDE`` (the ``id``/``site``/``time`` columns)."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from pipeline.errors import DataError

DEFAULT_EXCLUDE = ("id", "site", "time")


def is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def numeric_names(schema: pa.Schema, exclude: Sequence[str]) -> list[str]:
    return [f.name for f in schema if f.name not in exclude and is_number(f.type)]


def list_type(schema: pa.Schema, name: str, where: str) -> pa.DataType:
    kind = schema.field(name).type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or not is_number(kind.value_type):
        raise DataError(f"{where}: column {name!r} has type {kind}; expected a list of numbers")
    return kind
