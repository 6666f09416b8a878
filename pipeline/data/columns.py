"""Which Parquet columns can hold features: numbers, or one list column of numbers (vectors, or fixed-shape arrays
such as images: Arrow's ``fixed_shape_tensor``, read as its row-major values); by default every numeric column but
``DEFAULT_EXCLUDE`` (the ``id``/``site``/``time`` columns)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.errors import DataError

DEFAULT_EXCLUDE = ("id", "site", "time")


def is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def numeric_names(schema: pa.Schema, exclude: Sequence[str]) -> list[str]:
    return [f.name for f in schema if f.name not in exclude and is_number(f.type)]


def list_type(schema: pa.Schema, name: str, where: str) -> pa.DataType:
    """The list type of the vector column ``name`` (a tensor column's storage: its values, row-major)."""
    kind = schema.field(name).type
    kind = kind.storage_type if isinstance(kind, pa.BaseExtensionType) else kind
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or not is_number(kind.value_type):
        raise DataError(f"{where}: column {name!r} has type {schema.field(name).type}; expected a list of numbers "
                        "or a fixed-shape tensor of numbers")
    return kind


def tensor_shape(schema: pa.Schema, name: str) -> tuple[int, ...] | None:
    """Each row's (logical) shape in a fixed-shape tensor column (None for a plain list column)."""
    kind = schema.field(name).type
    if not isinstance(kind, pa.FixedShapeTensorType):
        return None
    physical, order = tensor_axes(kind)
    return tuple(physical[i] for i in order)


def tensor_axes(kind: pa.FixedShapeTensorType) -> tuple[tuple[int, ...], list[int]]:
    """A tensor type's physical shape, and the physical axes in logical order: Arrow stores each row as
    ``physical = logical.transpose(permutation)``, so ``logical = physical.transpose(argsort(permutation))``."""
    physical = tuple(kind.shape)
    return physical, np.argsort(kind.permutation).tolist() if kind.permutation else list(range(len(physical)))
