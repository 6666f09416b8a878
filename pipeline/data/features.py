"""Feature matrices from Parquet: a file, a folder of files or a glob, local or on S3.

The feature columns are either one list column (``features`` by default; vectors, or fixed-shape tensors such as
images, read row-major) or every numeric column not excluded (the ``id``/``site``/``time`` columns).
``filters`` keeps rows whose column equals a value (or is one of a list of values), e.g. ``{"site": "R80711"}``,
or lies in a range given by comparisons, e.g. ``{"wind_speed": {">": 1.0}}`` or ``{"time": {">=": "2015-01-01",
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

The parts live beside this module: ``listing`` finds the files, ``columns`` tells which hold features,
``filters`` types and pushes down the filters, ``scan`` scans and streams the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.data.columns import DEFAULT_EXCLUDE
from pipeline.data.filters import Filters
from pipeline.data.scan import FeatureScan, column_dtypes, column_names, scan_features
from pipeline.errors import DataError
from pipeline.storage.s3 import S3Options


@dataclass(frozen=True)
class Features:
    """``values`` (n, d) float32 with the provenance needed to register what was trained on."""

    values: np.ndarray
    columns: list[str]  # feature column names; ["features[0]", ...] for a list column
    fingerprint: str  # see pipeline.data.fingerprint: files' names, sizes and identities, columns, options
    files: list[str] = field(default_factory=list)
    rows_dropped: int = 0  # rows with NaN/inf dropped (only with drop_nonfinite=True)
    dtypes: list[str] = field(default_factory=list)  # each feature column's Parquet type (the list's values')
    shape: tuple[int, ...] | None = None  # each row's shape when the column holds fixed-shape tensors (images)

    @property
    def dim(self) -> int:
        return self.values.shape[1]


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
                    dtypes=column_dtypes(scan, values.shape[1]), shape=scan.shape)
