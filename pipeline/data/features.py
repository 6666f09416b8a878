"""Feature matrices from Parquet: a file, a folder of files or a glob, local or on S3.

The feature columns are either one fixed-size-list column (``features`` by default) or every
numeric column not excluded (the ``id``/``site``/``time`` columns). ``filters`` keeps rows
whose column equals a value (or is one of a list of values), e.g. ``{"site": "R80711"}``, or lies in
a range given by comparisons, e.g. ``{"wind_speed": {">": 1.0}}`` or ``{"time": {">=": "2015-01-01",
"<": "2015-03-01"}}`` (``RANGE_OPERATORS``).
Every bad input raises ``DataError`` naming the source, file, column and value.

Reading is in two steps, so that a cluster can share the work:

    scan = scan_features(uri, filters={"site": "R80711"})   # lists and fingerprints files, reads one footer
    for source in scan.files:                               # anywhere: a process, a Ray task
        for x in scan.blocks(source):                       # (b, d) float32, checked, streamed
            ...
    read_features(uri, ...)                                 # both steps, in memory: a Features

Only the feature columns are read, and the filters are pushed into the Parquet reader (row
groups whose statistics exclude the wanted values are skipped). Values go from Arrow to float32
directly. Hidden and temporary paths (any part of the path below the dataset root starting with
``.`` or ``_``: ``_temporary/``, ``_SUCCESS``, ``.part-0.crc``) are skipped, as Spark and Hive
writers expect.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs
import pyarrow.parquet as pq

from pipeline.data.fingerprint import SourceFile, fingerprint, source_files
from pipeline.errors import DataError
from pipeline.storage.s3 import S3Options
from pipeline.storage.uris import split_uri

DEFAULT_EXCLUDE = ("id", "site", "time")
BATCH_ROWS = 65_536  # rows per streamed block
Filters = Mapping[str, object]
RANGE_OPERATORS = (">", ">=", "<", "<=")  # a range filter's keys


def filter_expression(filters: Mapping[str, object], field: Callable):
    """The filters (:func:`_coerce_filters`' form: column -> list of values, or operator -> bound) as one
    expression of ``field(column)`` terms: ``pyarrow.compute.field`` for the Parquet reader, Ray Data's
    ``col`` for its datasets. ``None`` without filters."""
    expression = None
    for column, wanted in filters.items():
        if isinstance(wanted, Mapping):  # a range: every comparison holds
            terms = [{">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}[op](field(column), v)
                     for op, v in wanted.items()]
        else:  # equality for one value: the reader can then skip row groups by their min/max statistics
            member = field(column)
            is_in = getattr(member, "isin", None) or member.is_in  # pyarrow's name, Ray Data's name
            terms = [member == wanted[0] if len(wanted) == 1 else is_in(wanted)]
        for term in terms:
            expression = term if expression is None else expression & term
    return expression


@dataclass(frozen=True)
class Features:
    """``values`` (n, d) float32 with the provenance needed to register what was trained on."""

    values: np.ndarray
    columns: list[str]  # feature column names; ["features[0]", ...] for a list column
    fingerprint: str  # see pipeline.data.fingerprint: files' names, sizes and identities, columns, options
    files: list[str] = field(default_factory=list)
    rows_dropped: int = 0  # rows with NaN/inf dropped (only with drop_nonfinite=True)
    dtypes: list[str] = field(default_factory=list)  # each feature column's Parquet type (the list's values')

    @property
    def dim(self) -> int:
        return self.values.shape[1]


def _filesystem(uri: str, s3: S3Options | None):
    """(fsspec filesystem, path without scheme, whether it is local disk)."""
    try:
        parts = split_uri(uri, "features")
    except ValueError as error:
        raise DataError(str(error)) from None
    if parts.scheme == "s3":
        return (s3 or S3Options.from_env()).filesystem(), f"{parts.netloc}{parts.path}".rstrip("/"), False
    path = os.path.abspath(os.path.expanduser(parts.path if parts.scheme == "file" else uri))
    return fsspec.filesystem("file"), path, True


def _hidden(name: str, root: str) -> bool:
    """Whether any part of ``name`` below ``root`` starts with ``.`` or ``_`` (Spark/Hive's hidden files)."""
    relative = name[len(root):] if name.startswith(root) else name.rsplit("/", 1)[-1]
    return any(part.startswith((".", "_")) for part in relative.strip("/").split("/"))


def _list_files(uri: str, fs, path: str, local: bool) -> list[SourceFile]:
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
        infos = [i for i in infos if i.get("type") == "file" and not _hidden(i["name"], root)]
        return sorted(source_files(infos, root, local, fs), key=lambda f: f.name)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable URI, server gone, no permission
        raise DataError(f"{uri}: cannot list ({type(error).__name__}: {error})") from None


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _numeric_names(schema: pa.Schema, exclude: Sequence[str]) -> list[str]:
    return [f.name for f in schema if f.name not in exclude and _is_number(f.type)]


def _coerce_filters(filters: Filters, schema: pa.Schema, where: str) -> dict[str, list | dict]:
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
            bounds = _coerce_filters({column: [datetime.combine(v, time()) if type(v) is date else v
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


@dataclass(frozen=True)
class FeatureScan:
    """What reading ``uri`` means, learned from its listing and one file's footer (no rows decoded):
    the files, the Parquet columns to read, the filters in their columns' types, and the fingerprint.
    Small and picklable: Ray tasks read the files with it."""

    uri: str
    files: tuple[SourceFile, ...]
    read_columns: tuple[str, ...]  # the Parquet columns holding the features
    list_column: bool  # one list column (vectors) rather than numeric columns
    filters: dict  # column -> list of values of its type, or a range: operator -> bound
    drop_nonfinite: bool
    fingerprint: str
    exclude: tuple[str, ...] | None = None  # every numeric column but these (None: columns named explicitly)
    s3: S3Options | None = None
    read_dtypes: tuple[str, ...] = ()  # the read columns' Parquet types (a list column: its values' type)

    @property
    def local(self) -> bool:
        return urlsplit(self.uri).scheme != "s3"

    def filesystem(self):
        """A pyarrow filesystem for the files' paths (local disk, or S3 through s3fs)."""
        if self.local:
            return pa.fs.LocalFileSystem()
        return pa.fs.PyFileSystem(pa.fs.FSSpecHandler((self.s3 or S3Options.from_env()).filesystem()))

    def arrow_filter(self) -> pc.Expression | None:
        """The filters as a pyarrow expression, for the Parquet reader to push down."""
        return filter_expression(self.filters, pc.field)

    def count_rows(self) -> int:
        """Rows that pass the filters (NaN rows included), from the footers and, with filters, the filter
        columns only: no feature data is read."""
        import pyarrow.dataset as ds

        try:
            dataset = ds.dataset([f.path for f in self.files], format="parquet", filesystem=self.filesystem())
            return dataset.count_rows(filter=self.arrow_filter())
        except Exception as error:  # noqa: BLE001 - a corrupt file, a schema that differs, the server gone
            raise DataError(f"{self.uri}: cannot count rows ({type(error).__name__}: {error})") from None

    def blocks(self, source: SourceFile, batch_rows: int = BATCH_ROWS,
               filesystem=None) -> Iterator[tuple[np.ndarray, int]]:
        """Stream one file's rows: ``(x (b, d) float32, rows dropped)`` per block, checked as
        :func:`read_features` checks them (errors name the file, column and row)."""
        where, filesystem = source.display, filesystem or self.filesystem()
        try:
            schema = pq.read_schema(source.path, filesystem=filesystem)
            fragment = ds.dataset(source.path, format="parquet", filesystem=filesystem)
        except Exception as error:  # noqa: BLE001 - a corrupt or unreadable file
            raise DataError(f"{where}: not a readable Parquet file ({type(error).__name__}: {error})") from None
        self._check_schema(schema, where)
        try:
            batches = fragment.to_batches(columns=list(self.read_columns), filter=self.arrow_filter(),
                                          batch_size=batch_rows)
            row = 0
            for batch in batches:
                if batch.num_rows:
                    x, dropped = self.matrix(pa.Table.from_batches([batch]), where, row)
                    row += batch.num_rows
                    yield x, dropped
        except DataError:
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as error:
            raise DataError(f"{where}: cannot read ({type(error).__name__}: {error})") from None

    def _check_schema(self, schema: pa.Schema, where: str) -> None:
        for column in self.filters:
            if column not in schema.names:
                raise DataError(f"{where}: filter column {column!r} not found (columns: {', '.join(schema.names)})")
        if self.list_column:
            _list_type(schema, self.read_columns[0], where)
            return
        if self.exclude is not None and (names := _numeric_names(schema, self.exclude)) != list(self.read_columns):
            raise DataError(f"{where}: feature columns {names[:4]}... (d={len(names)}) differ from "
                            f"{self.files[0].display}'s {list(self.read_columns[:4])}... (d={len(self.read_columns)})")
        for name in self.read_columns:
            if name not in schema.names:
                raise DataError(f"{where}: feature column {name!r} not found (columns: {', '.join(schema.names)})")
            if not _is_number(schema.field(name).type):
                raise DataError(f"{where}: feature column {name!r} has type {schema.field(name).type}; "
                                "expected numbers")

    def matrix(self, table: pa.Table, where: str, first_row: int = 0) -> tuple[np.ndarray, int]:
        """``(x (n, d) float32, rows dropped)`` of a table of the feature columns. NaN/inf/null are an error
        naming the column and row (``first_row`` + the row in ``table``), or dropped with ``drop_nonfinite``."""
        if self.list_column:
            name = self.read_columns[0]
            column = table[name].combine_chunks()
            if column.null_count:
                raise DataError(f"{where}: column {name!r} has {column.null_count} null rows")
            lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise DataError(f"{where}: column {name!r} mixes vector lengths {sorted(lengths.tolist())}")
            flat = pc.list_flatten(column).cast(pa.float32()).to_numpy(zero_copy_only=False)
            x = flat.reshape(len(table), int(lengths[0]))  # (n, d)
            names = [f"{name}[{i}]" for i in range(x.shape[1])]
        else:
            names = list(self.read_columns)
            x = np.empty((len(table), len(names)), dtype=np.float32)  # (n, d)
            for j, name in enumerate(names):
                x[:, j] = table[name].cast(pa.float32()).to_numpy(zero_copy_only=False)  # nulls become NaN
        bad = ~np.isfinite(x)
        if not bad.any():
            return x, 0
        rows = bad.any(axis=1)
        if not self.drop_nonfinite:
            row, col = map(int, np.argwhere(bad)[0])
            value = table[names[col]][row].as_py() if not self.list_column else x[row, col]
            raise DataError(f"{where}: {int(rows.sum())} rows have NaN/inf/null values, first in column "
                            f"{names[col]!r} at row {first_row + row} ({value}); clean the data or ask to drop them "
                            "(drop_nonfinite)")
        return x[~rows], int(rows.sum())


def _list_type(schema: pa.Schema, name: str, where: str) -> pa.DataType:
    kind = schema.field(name).type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or not _is_number(kind.value_type):
        raise DataError(f"{where}: column {name!r} has type {kind}; expected a list of numbers")
    return kind


def scan_features(
    uri: str,
    *,
    feature_column: str = "features",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    drop_nonfinite: bool = False,
    s3: S3Options | None = None,
) -> FeatureScan:
    """List ``uri``'s files and read the first one's footer: which columns to read, the filters in their
    columns' types, and the fingerprint. No rows are decoded; local files are hashed whole for the
    fingerprint, S3 objects are identified by their listed ETags (see ``pipeline.data.fingerprint``)."""
    filters = dict(filters or {})
    fs, path, local = _filesystem(uri, s3)
    files = _list_files(uri, fs, path, local)
    if not files:
        raise DataError(f"{uri}: no Parquet files found")
    where = files[0].display
    try:
        schema = pq.read_schema(files[0].path, filesystem=fs)
    except Exception as error:  # noqa: BLE001 - a corrupt or unreadable file
        raise DataError(f"{where}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    if columns is not None:
        if not columns:
            raise DataError(f"{where}: the list of feature columns is empty")
        read, list_column, auto = tuple(columns), False, None
    elif feature_column in schema.names:
        _list_type(schema, feature_column, where)
        read, list_column, auto = (feature_column,), True, None
    else:
        read, list_column, auto = tuple(_numeric_names(schema, exclude)), False, tuple(exclude)
        if not read:
            raise DataError(f"{where}: no {feature_column!r} column and no numeric columns besides "
                            f"{', '.join(exclude)} (columns: {', '.join(schema.names) or 'none'})")
    options = {"feature_column": feature_column, "exclude": sorted(exclude), "filters": filters,
               "drop_nonfinite": drop_nonfinite, **({"columns": list(columns)} if columns is not None else {})}
    digest = fingerprint(files, columns=list(read), options=options)
    dtypes = tuple(str(_list_type(schema, name, where).value_type if list_column else schema.field(name).type)
                   if name in schema.names else "missing" for name in read)
    return FeatureScan(uri=uri, files=tuple(files), read_columns=read, list_column=list_column,
                       filters=_coerce_filters(filters, schema, where), drop_nonfinite=drop_nonfinite,
                       fingerprint=digest, exclude=auto, s3=s3, read_dtypes=dtypes)


def column_names(scan: FeatureScan, dim: int) -> list[str]:
    """Display names of the ``dim`` feature columns: the numeric columns, or ``features[i]``."""
    return [f"{scan.read_columns[0]}[{i}]" for i in range(dim)] if scan.list_column else list(scan.read_columns)


def column_dtypes(scan: FeatureScan, dim: int) -> list[str]:
    """The Parquet types of the ``dim`` feature columns (a list column's value type for each)."""
    return list(scan.read_dtypes[:1]) * dim if scan.list_column else list(scan.read_dtypes)


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
    """Read the feature matrix of ``uri`` into memory (see the module docstring). Nothing is written.

    NaN, inf and null values are rejected with the file, column and row of the first one, unless
    ``drop_nonfinite`` is set: then those rows are dropped and counted in ``rows_dropped``.
    ``columns`` names the numeric feature columns explicitly (in that order) instead. For data
    larger than one process, scan it and stream ``scan.blocks`` (as the core prior fit does).
    """
    return read_scanned(scan_features(uri, feature_column=feature_column, exclude=exclude, columns=columns,
                                      filters=filters, drop_nonfinite=drop_nonfinite, s3=s3))


def read_scanned(scan: FeatureScan) -> Features:
    """Read the rows of a table already scanned (:func:`scan_features`), without listing or hashing it again:
    what a site step does after naming itself by the scan's fingerprint. See :func:`read_features`."""
    uri, filters, feature_column = scan.uri, scan.filters, scan.read_columns[0]
    filesystem = scan.filesystem()
    blocks, dropped, dim_of = [], 0, None
    for source in scan.files:
        for x, lost in scan.blocks(source, filesystem=filesystem):
            dropped += lost
            if dim_of is not None and x.shape[1] != dim_of[1]:
                raise DataError(f"{source.display}: feature columns {column_names(scan, x.shape[1])[:4]}... "
                                f"(d={x.shape[1]}) differ from {dim_of[0]}'s (d={dim_of[1]})")
            dim_of = dim_of or (source.display, x.shape[1])
            blocks.append(x)
    values = np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)  # (n, d)
    if len(values) == 0:
        detail = f" after filters {dict(filters)}" if filters else ""
        detail += f" ({dropped} rows dropped for NaN/inf)" if dropped else ""
        raise DataError(f"{uri}: no feature rows{detail} (the table is empty)")
    if values.shape[1] == 0:
        raise DataError(f"{uri}: column {feature_column!r} holds empty vectors")
    return Features(values=values, columns=column_names(scan, values.shape[1]), fingerprint=scan.fingerprint,
                    files=[f.display for f in scan.files], rows_dropped=dropped,
                    dtypes=column_dtypes(scan, values.shape[1]))
