"""The first of reading's two steps (see :mod:`pipeline.data.features`): :func:`scan_features` lists a
table's files and reads one footer into a :class:`FeatureScan`, which any process or Ray task then uses to
stream each file's rows as checked float32 blocks (``scan.blocks(source)``). Only the feature columns are
read, and the filters are pushed into the Parquet reader (row groups whose statistics exclude the wanted
values are skipped). Values go from Arrow to float32 directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs
import pyarrow.parquet as pq

from pipeline.data.columns import DEFAULT_EXCLUDE, is_number, list_type, numeric_names, tensor_axes, tensor_shape
from pipeline.data.filters import Filters, coerce_filters, filter_expression
from pipeline.data.fingerprint import SourceFile, fingerprint
from pipeline.data.listing import filesystem_of, list_files
from pipeline.errors import DataError
from pipeline.storage.s3 import S3Options

BATCH_ROWS = 65_536  # rows per streamed block


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
    shape: tuple[int, ...] | None = None  # each row's shape, for a fixed-shape tensor column (e.g. an image)
    dim: int | None = None  # features per row, where the footer says (not for a list column of any length)

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
            list_type(schema, self.read_columns[0], where)
            return
        if self.exclude is not None and (names := numeric_names(schema, self.exclude)) != list(self.read_columns):
            raise DataError(f"{where}: feature columns {names[:4]}... (d={len(names)}) differ from "
                            f"{self.files[0].display}'s {list(self.read_columns[:4])}... (d={len(self.read_columns)})")
        for name in self.read_columns:
            if name not in schema.names:
                raise DataError(f"{where}: feature column {name!r} not found (columns: {', '.join(schema.names)})")
            if not is_number(schema.field(name).type):
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
            if isinstance(column, pa.FixedShapeTensorArray):  # row-major (logical) order, whatever its physical one
                physical, order = tensor_axes(column.type)
                flat = pc.list_flatten(column.storage).cast(pa.float32()).to_numpy(zero_copy_only=False)
                x = flat.reshape(len(table), *physical).transpose(0, *(1 + i for i in order))  # (n, *logical)
                x = np.ascontiguousarray(x).reshape(len(table), -1)  # (n, d)
            else:
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
    fs, path, local = filesystem_of(uri, s3)
    files = list_files(uri, fs, path, local)
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
        list_type(schema, feature_column, where)
        read, list_column, auto = (feature_column,), True, None
    else:
        read, list_column, auto = tuple(numeric_names(schema, exclude)), False, tuple(exclude)
        if not read:
            raise DataError(f"{where}: no {feature_column!r} column and no numeric columns besides "
                            f"{', '.join(exclude)} (columns: {', '.join(schema.names) or 'none'})")
    options = {"feature_column": feature_column, "exclude": sorted(exclude), "filters": filters,
               "drop_nonfinite": drop_nonfinite, **({"columns": list(columns)} if columns is not None else {})}
    digest = fingerprint(files, columns=list(read), options=options)
    dtypes = tuple(str(list_type(schema, name, where).value_type if list_column else schema.field(name).type)
                   if name in schema.names else "missing" for name in read)
    dim = len(read)
    if list_column:  # a tensor column's storage is a fixed-size list too
        kind = list_type(schema, read[0], where)
        dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
    return FeatureScan(uri=uri, files=tuple(files), read_columns=read, list_column=list_column,
                       filters=coerce_filters(filters, schema, where), drop_nonfinite=drop_nonfinite,
                       fingerprint=digest, exclude=auto, s3=s3, read_dtypes=dtypes,
                       shape=tensor_shape(schema, read[0]) if list_column else None, dim=dim)


def column_names(scan: FeatureScan, dim: int) -> list[str]:
    """Display names of the ``dim`` feature columns: the numeric columns, or ``features[i]``."""
    return [f"{scan.read_columns[0]}[{i}]" for i in range(dim)] if scan.list_column else list(scan.read_columns)


def column_dtypes(scan: FeatureScan, dim: int) -> list[str]:
    """The Parquet types of the ``dim`` feature columns (a list column's value type for each)."""
    return list(scan.read_dtypes[:1]) * dim if scan.list_column else list(scan.read_dtypes)

