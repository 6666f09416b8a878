"""Row filters on a feature table: a column equal to a value (or one of a list of values), e.g.
``{"site": "R80711"}``, or in a range given by comparisons, e.g. ``{"wind_speed": {">": 1.0}}``
(``RANGE_OPERATORS``). :func:`coerce_filters` types them by the table's schema; :func:`filter_expression`
turns them into an expression for the Parquet reader."""

from __future__ import annotations

import operator
from datetime import date, datetime, time
from typing import Callable, Mapping

import pyarrow as pa

from pipeline.errors import DataError

Filters = Mapping[str, object]
RANGE_OPERATORS = (">", ">=", "<", "<=")  # a range filter's keys


def filter_expression(filters: Mapping[str, object], field: Callable):
    """The filters (:func:`coerce_filters`' form: column -> list of values, or operator -> bound) as one
    expression of ``field(column)`` terms (``pyarrow.compute.field``, for the Parquet reader to push
    down). ``None`` without filters."""
    expression = None
    for column, wanted in filters.items():
        if isinstance(wanted, Mapping):  # a range: every comparison holds
            terms = [{">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}[op](field(column), v)
                     for op, v in wanted.items()]
        else:  # equality for one value: the reader can then skip row groups by their min/max statistics
            member = field(column)
            terms = [member == wanted[0] if len(wanted) == 1 else member.isin(wanted)]
        for term in terms:
            expression = term if expression is None else expression & term
    return expression


def coerce_filters(filters: Filters, schema: pa.Schema, where: str) -> dict[str, list | dict]:
    """Each filter's values as a list of Python values of its column's type (``"2015"`` -> 2015); a range's
    bounds likewise, as ``{operator: bound}``."""
    coerced: dict[str, list | dict] = {}
    for column, wanted in filters.items():
        if column not in schema.names:
            raise DataError(f"{where}: filter column {column!r} not found (columns: {', '.join(schema.names)})")
        if isinstance(wanted, Mapping):
            unknown = [op for op in wanted if op not in RANGE_OPERATORS]
            if unknown or not wanted:
                raise DataError(f"{where}: filter on {column!r}: a range is a mapping of comparisons "
                                f"({', '.join(RANGE_OPERATORS)}) to bounds, got {dict(wanted)!r}")
            bounds = coerce_filters({column: [datetime.combine(v, time()) if type(v) is date else v
                                              for v in wanted.values()]},  # YAML reads 2015-03-01 as a date
                                    schema, where)[column]
            coerced[column] = dict(zip(wanted, bounds, strict=True))
            continue
        values = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        kind = schema.field(column).type
        if pa.types.is_dictionary(kind):  # e.g. a categorical site column: compare its values
            kind = kind.value_type
        try:
            if all(isinstance(v, str) for v in values) and not pa.types.is_string(kind):
                coerced[column] = pa.array(values).cast(kind).to_pylist()  # e.g. "2015" or "false" from a command line
            else:
                coerced[column] = pa.array(values, type=kind).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise DataError(f"{where}: filter value {wanted!r} does not fit column {column!r} "
                            f"of type {schema.field(column).type}") from None
    return coerced
