"""Feature matrices from Parquet: a file, a folder of files or a glob, local or on S3.

The feature columns are either one fixed-size-list column (``features`` by default) or every
numeric column not excluded (the ``id``/``site``/``time`` columns). ``filters`` keeps rows
whose column equals a value (or is one of a list of values), e.g. ``{"site": "R80711"}``.
Every bad input raises ``DataError`` naming the source, file, column and value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.fingerprint import SourceFile, fingerprint
from pipeline.storage.s3 import S3Options

DEFAULT_EXCLUDE = ("id", "site", "time")
Filters = Mapping[str, object]


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, column and value."""


@dataclass(frozen=True)
class Features:
    """``values`` (n, d) float32 with the provenance needed to register what was trained on."""

    values: np.ndarray
    columns: list[str]  # feature column names; ["features[0]", ...] for a list column
    fingerprint: str  # sha256 over schema, filters and each file's name, size and content hash/etag
    files: list[str] = field(default_factory=list)
    rows_dropped: int = 0  # rows with NaN/inf dropped (only with drop_nonfinite=True)

    @property
    def dim(self) -> int:
        return self.values.shape[1]


def _filesystem(uri: str, s3: S3Options | None):
    """(fsspec filesystem, path without scheme, whether it is local disk)."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return (s3 or S3Options.from_env()).filesystem(), f"{parts.netloc}{parts.path}".rstrip("/"), False
    if parts.scheme not in ("", "file"):
        raise DataError(f"{uri}: unsupported URI scheme {parts.scheme!r} (use a local path, file:// or s3://)")
    path = os.path.abspath(os.path.expanduser(parts.path if parts.scheme == "file" else uri))
    return fsspec.filesystem("file"), path, True


def _list_files(uri: str, fs, path: str, local: bool) -> list[SourceFile]:
    """The Parquet files of ``uri`` (a file, a folder searched recursively, or a glob) with sizes and
    content identity, sorted by name."""
    try:
        if any(c in path for c in "*?["):
            infos, root = [fs.info(p) for p in fs.glob(path)], path.rsplit("/", 1)[0]
        elif fs.isdir(path):
            infos = [i for i in fs.find(path, detail=True).values()
                     if i["name"].endswith(".parquet") and not i["name"].rsplit("/", 1)[-1].startswith((".", "_"))]
            root = path
        elif fs.exists(path):
            infos, root = [fs.info(path)], path.rsplit("/", 1)[0]
        else:
            raise DataError(f"{uri}: {'no such file or directory' if local else 'no such object or prefix'}")
        return sorted((SourceFile.of(i, root, local) for i in infos if i.get("type") == "file"),
                      key=lambda f: f.name)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable URI, server gone, no permission
        raise DataError(f"{uri}: cannot list ({type(error).__name__}: {error})") from None


def _apply_filters(table: pa.Table, filters: Filters, where: str) -> pa.Table:
    for column, wanted in filters.items():
        if column not in table.column_names:
            raise DataError(f"{where}: filter column {column!r} not found (columns: {', '.join(table.column_names)})")
        values = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        kind = table.schema.field(column).type
        data = table[column]
        if pa.types.is_dictionary(kind):  # e.g. a categorical site column: compare its values
            kind, data = kind.value_type, data.cast(kind.value_type)
        try:
            if all(isinstance(v, str) for v in values) and not pa.types.is_string(kind):
                value_set = pa.array(values).cast(kind)  # e.g. "2015" or "false" from a command line
            else:
                value_set = pa.array(values, type=kind)
            mask = pc.is_in(data, value_set=value_set)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise DataError(f"{where}: filter value {wanted!r} does not fit column {column!r} "
                            f"of type {table.schema.field(column).type}") from None
        table = table.filter(mask)
    return table


def _matrix(table: pa.Table, feature_column: str, exclude: Sequence[str], where: str) -> tuple[np.ndarray, list[str]]:
    """(n, d) float64 values and column names of one file's rows."""
    if feature_column in table.column_names:
        col_type = table.schema.field(feature_column).type
        if not (pa.types.is_fixed_size_list(col_type) or pa.types.is_list(col_type) or pa.types.is_large_list(col_type)) \
                or not (pa.types.is_integer(col_type.value_type) or pa.types.is_floating(col_type.value_type)):
            raise DataError(f"{where}: column {feature_column!r} has type {col_type}; expected a list of numbers")
        column = table[feature_column].combine_chunks()
        if column.null_count:
            raise DataError(f"{where}: column {feature_column!r} has {column.null_count} null rows")
        lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise DataError(f"{where}: column {feature_column!r} mixes vector lengths {sorted(lengths.tolist())}")
        dim = int(lengths[0]) if len(lengths) else (col_type.list_size if pa.types.is_fixed_size_list(col_type) else 0)
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64)
        return flat.reshape(len(table), dim), [f"{feature_column}[{i}]" for i in range(dim)]  # (n, d)
    names = [f.name for f in table.schema if f.name not in exclude
             and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not names:
        raise DataError(f"{where}: no {feature_column!r} column and no numeric columns besides "
                        f"{', '.join(exclude)} (columns: {', '.join(table.column_names) or 'none'})")
    return _named_columns(table, names, where)


def _named_columns(table: pa.Table, names: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """(n, d) float64 values of the numeric columns ``names``, in that order."""
    if not names:
        raise DataError(f"{where}: the list of feature columns is empty")
    values = np.empty((len(table), len(names)), dtype=np.float64)  # (n, d)
    for j, name in enumerate(names):
        if name not in table.column_names:
            raise DataError(f"{where}: feature column {name!r} not found (columns: {', '.join(table.column_names)})")
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DataError(f"{where}: feature column {name!r} has type {kind}; expected numbers")
        values[:, j] = table[name].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    return values, names


def read_features(
    uri: str,
    *,
    feature_column: str = "features",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    drop_nonfinite: bool = False,
    s3: S3Options | None = None,
) -> Features:
    """Read the feature matrix of ``uri`` (see the module docstring). Nothing is written anywhere.

    NaN, inf and null values are rejected with the file, column and row of the first one, unless
    ``drop_nonfinite`` is set: then those rows are dropped and counted in ``rows_dropped``.
    ``columns`` names the numeric feature columns explicitly (in that order) instead.
    """
    filters = dict(filters or {})
    fs, path, local = _filesystem(uri, s3)
    files = _list_files(uri, fs, path, local)
    if not files:
        raise DataError(f"{uri}: no Parquet files found")
    blocks, names_seen, dropped, schema = [], None, 0, None
    for source in files:
        where = source.display
        try:
            table = pq.read_table(source.path, filesystem=fs)
        except Exception as error:  # noqa: BLE001 - a corrupt or unreadable file
            raise DataError(f"{where}: not a readable Parquet file ({type(error).__name__}: {error})") from None
        table = _apply_filters(table, filters, where)
        if table.num_rows == 0:
            continue  # an empty file (or one the filters empty) adds nothing
        values, names = _matrix(table, feature_column, exclude, where) if columns is None else \
            _named_columns(table, list(columns), where)
        if names_seen is not None and names != names_seen:
            raise DataError(f"{where}: feature columns {names[:4]}... (d={len(names)}) differ from "
                            f"{files[0].display}'s {names_seen[:4]}... (d={len(names_seen)})")
        names_seen, schema = names, schema or table.schema
        bad = ~np.isfinite(values)
        if bad.any():
            if not drop_nonfinite:
                row, col = map(int, np.argwhere(bad)[0])
                raise DataError(f"{where}: {int(bad.any(axis=1).sum())} rows have NaN/inf/null values, first in "
                                f"column {names[col]!r} at row {row} ({values[row, col]}); clean the data or "
                                "ask to drop them (drop_nonfinite)")
            dropped += int(bad.any(axis=1).sum())
            values = values[~bad.any(axis=1)]
        blocks.append(values)
    values = np.concatenate(blocks).astype(np.float32) if blocks else np.empty((0, 0), np.float32)
    if len(values) == 0:
        detail = f" after filters {filters}" if filters else ""
        detail += f" ({dropped} rows dropped for NaN/inf)" if dropped else ""
        raise DataError(f"{uri}: no feature rows{detail} (the table is empty)")
    if values.shape[1] == 0:
        raise DataError(f"{uri}: column {feature_column!r} holds empty vectors")
    options = {"feature_column": feature_column, "exclude": sorted(exclude), "filters": filters,
               "drop_nonfinite": drop_nonfinite, **({"columns": list(columns)} if columns is not None else {})}
    digest = fingerprint(files, schema=[(c, "float") for c in names_seen], options=options)
    return Features(values=values, columns=names_seen, fingerprint=digest, files=[f.display for f in files],
                    rows_dropped=dropped)
