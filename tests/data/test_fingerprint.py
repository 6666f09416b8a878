"""The data fingerprint changes with any value of the data (local disk and S3) and never equals an older scheme's."""

import hashlib
import json
import shutil
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.fingerprint import SourceFile, fingerprint
from pipeline.data.scan import scan_features
from pipeline.storage import S3Options, Store
from tests.support.s3server import BUCKET

ROWS = 130_000  # 3 float64 + 1 int64 columns: ~4.2 MB, well over the 1 MiB the sampled scheme read whole
FLOATS = ("power", "speed", "temperature")
EDITS = 30  # single-value edits, spread over the rows and columns


def wind_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=rows) for name in FLOATS}
    return pa.table({**columns, "count": rng.integers(0, 1000, size=rows), "site": ["R80711"] * rows})


def edited(table: pa.Table, column: str, row: int) -> pa.Table:
    """``table`` with one value changed: +1.0 on a float, +1 on an integer."""
    values = table.column(column).to_numpy().copy()
    values[row] += 1
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def edits(table: pa.Table) -> list[tuple[str, int]]:
    columns = (*FLOATS, "count")
    rows = np.linspace(0, table.num_rows - 1, EDITS).astype(int)
    return [(columns[i % len(columns)], int(row)) for i, row in enumerate(rows)]


@pytest.mark.parametrize("compression", ["snappy", "none"])  # pyarrow's default, and uncompressed
def test_any_single_value_edit_of_a_large_local_file_changes_the_fingerprint(tmp_path, compression):
    table, path = wind_table(), tmp_path / "ds" / "wind.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, compression=compression)
    assert path.stat().st_size > 4_000_000
    original = scan_features(str(path.parent)).fingerprint
    shutil.copytree(path.parent, tmp_path / "copy")
    assert scan_features(str(tmp_path / "copy")).fingerprint == original  # the same bytes elsewhere: the same data
    unchanged = []
    for column, row in edits(table):
        pq.write_table(edited(table, column, row), path, compression=compression)
        if scan_features(str(path.parent)).fingerprint == original:
            unchanged.append((column, row))
    assert unchanged == [], f"{len(unchanged)} of {EDITS} single-value edits kept the fingerprint: {unchanged}"
    pq.write_table(table, path, compression=compression)  # the original values again: the original fingerprint
    assert scan_features(str(path.parent)).fingerprint == original


def test_a_folder_of_files_is_fingerprinted_in_order_and_an_edit_in_any_file_shows(tmp_path):
    """Files hashed in parallel, listed in name order; an edit that keeps its file's size (uncompressed) shows."""
    tables = [wind_table(ROWS, seed) for seed in range(5)]
    for i, t in enumerate(tables):
        pq.write_table(t, tmp_path / f"part-{i}.parquet", compression="none")
    scan = scan_features(str(tmp_path))
    assert [f.name for f in scan.files] == [f"part-{i}.parquet" for i in range(5)]
    assert scan_features(str(tmp_path)).fingerprint == scan.fingerprint
    size = (tmp_path / "part-3.parquet").stat().st_size
    pq.write_table(edited(tables[3], "speed", 22_413), tmp_path / "part-3.parquet", compression="none")
    assert (tmp_path / "part-3.parquet").stat().st_size == size
    assert scan_features(str(tmp_path)).fingerprint != scan.fingerprint


def version_2(path, columns: list[str], options: dict) -> str:
    """The fingerprint of a one-file dataset as version 2 (2026-11) made it: a file up to 1 MiB hashed whole
    after its size, the larger ones sampled."""
    data = path.read_bytes()
    content = "sampled-sha256:" + hashlib.sha256(str(len(data)).encode() + data).hexdigest()
    payload = {"version": 2, "files": [[path.name, len(data), content]], "columns": columns, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def version_1(path, columns: list[str], options: dict) -> str:
    """Version 1 (2026-11, no version field): the file's SHA-256, the schema read instead of the columns."""
    data = path.read_bytes()
    payload = {"files": [[path.name, len(data), "sha256:" + hashlib.sha256(data).hexdigest()]],
               "schema": [[c, "double"] for c in columns], "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def test_an_older_schemes_fingerprint_never_equals_todays_for_the_same_data(tmp_path):
    path = tmp_path / "small.parquet"  # small enough that version 2 read it whole: it told edits apart too
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), path)
    fs = fsspec.filesystem("file")
    files = [SourceFile.of(fs.info(str(path)), str(tmp_path), True, fs)]
    columns, options = ["a", "b"], {"exclude": ["id", "site", "time"], "filters": {}}
    today = fingerprint(files, columns, options)
    assert today not in (version_1(path, columns, options), version_2(path, columns, options))
    # so a record of an older scheme reads as "other data" (a named run refuses, a site step reruns once)


def s3_put(local, uri: str, chunksize: int | None = None) -> str:
    """Upload ``local`` to ``uri`` (replacing what is there) and return the object's ETag."""
    fs = S3Options.from_env().filesystem()
    path = uri.removeprefix("s3://")
    fs.put_file(str(local), path, **({"chunksize": chunksize} if chunksize else {}))
    return fs.info(path)["ETag"].strip('"')


@pytest.mark.parametrize("rows, chunksize, parts", [(ROWS, None, 1), (400_000, 5 << 20, 3)])
def test_an_edited_file_reuploaded_to_s3_changes_the_fingerprint(s3_server, tmp_path, rows, chunksize, parts):
    """A single-part upload (ETag: the MD5 of the bytes) and a multipart one (the MD5 of the parts' MD5s, ``-3``)."""
    prefix = f"s3://{BUCKET}/fingerprint-{uuid.uuid4().hex[:8]}"
    table, local = wind_table(rows), tmp_path / "wind.parquet"
    pq.write_table(table, local)
    etag = s3_put(local, f"{prefix}/ds/wind.parquet", chunksize)
    assert etag.endswith(f"-{parts}") == (parts > 1), etag
    original = scan_features(f"{prefix}/ds").fingerprint
    s3_put(local, f"{prefix}/copy/wind.parquet", chunksize)
    assert scan_features(f"{prefix}/copy").fingerprint == original  # the same bytes elsewhere: the same data
    pq.write_table(edited(table, "power", rows // 2), local)  # +1.0, the file's size unchanged
    assert s3_put(local, f"{prefix}/ds/wind.parquet", chunksize) != etag
    assert scan_features(f"{prefix}/ds").fingerprint != original
    assert scan_features(f"{prefix}/ds/*.parquet").fingerprint != original  # a glob lists with HEAD requests


def test_an_s3_object_listed_without_an_etag_is_identified_by_its_bytes(s3_server, tmp_path):
    prefix = f"{BUCKET}/fingerprint-{uuid.uuid4().hex[:8]}"
    store, fs = Store.open(f"s3://{prefix}"), S3Options.from_env().filesystem()
    contents = []
    for i, value in enumerate([1.0, 2.0]):
        local = tmp_path / f"v{i}.parquet"
        pq.write_table(pa.table({"a": [value, 5.0]}), local)
        store.put_file(f"v{i}/x.parquet", local)
        info = {k: v for k, v in fs.info(f"{prefix}/v{i}/x.parquet").items() if k.lower() != "etag"}
        contents.append(SourceFile.of(info, f"{prefix}/v{i}", False, fs).content)
        assert contents[-1] == SourceFile.of(fsspec.filesystem("file").info(str(local)), str(tmp_path), True,
                                             fsspec.filesystem("file")).content
    assert contents[0] != contents[1]
