import datetime
import shutil

import fsspec.implementations.local
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.data import read_features
from pipeline.errors import DataError


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def list_table(values: np.ndarray, site: list[str]) -> pa.Table:
    flat = pa.array(values.reshape(-1).astype(np.float32))
    return pa.table({"features": pa.FixedSizeListArray.from_arrays(flat, values.shape[1]), "site": site})


def test_numeric_columns_exclude_id_site_time(tmp_path):
    path = write(tmp_path / "t.parquet", id=[1, 2, 3], site=["a", "b", "a"], time=[0.0, 1.0, 2.0],
                 power=[1.0, 2.0, 3.0], speed=[4, 5, 6], label=["x", "y", "z"])
    features = read_features(str(path))
    assert features.columns == ["power", "speed"]
    np.testing.assert_array_equal(features.values, [[1, 4], [2, 5], [3, 6]])
    assert features.values.dtype == np.float32 and features.dim == 2


def test_fixed_size_list_column_folder_glob_and_filters(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    (tmp_path / "ds").mkdir()
    pq.write_table(list_table(a, ["s1"] * 3 + ["s2"] * 3), tmp_path / "ds" / "part-0.parquet")
    pq.write_table(list_table(b, ["s1"] * 4), tmp_path / "ds" / "part-1.parquet")
    everything = read_features(str(tmp_path / "ds"))
    np.testing.assert_allclose(everything.values, np.concatenate([a, b]), rtol=1e-6)
    assert everything.columns == ["features[0]", "features[1]", "features[2]"]
    assert len(everything.files) == 2
    site1 = read_features(str(tmp_path / "ds" / "*.parquet"), filters={"site": "s1"})
    np.testing.assert_allclose(site1.values, np.concatenate([a[:3], b]), rtol=1e-6)
    both = read_features(f"file://{tmp_path}/ds", filters={"site": ["s1", "s2"]})
    assert len(both.values) == 10


def test_a_column_of_fixed_shape_tensors_reads_as_rows_of_row_major_values_with_its_shape(tmp_path):
    images = np.arange(5 * 2 * 3 * 4, dtype=np.float32).reshape(5, 2, 3, 4)  # (n, C, H, W)
    path = write(tmp_path / "images.parquet", pixels=pa.FixedShapeTensorArray.from_numpy_ndarray(images),
                 site=["a", "b", "a", "a", "b"])
    features = read_features(str(path), feature_column="pixels", filters={"site": "a"})
    assert features.shape == (2, 3, 4) and features.columns[:2] == ["pixels[0]", "pixels[1]"]
    assert np.array_equal(features.values, images[[0, 2, 3]].reshape(3, -1))  # C, H, W order, as numpy's
    pq.write_table(list_table(images.reshape(5, -1), ["a"] * 5), tmp_path / "flat.parquet")
    assert read_features(str(tmp_path / "flat.parquet")).shape is None  # a plain list column has no shape
    transposed = images.transpose(0, 1, 3, 2)  # a view: stored in its physical order, with a permutation
    tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(transposed)
    assert tensors.type.permutation == [0, 2, 1]
    permuted = read_features(str(write(tmp_path / "permuted.parquet", pixels=tensors)), feature_column="pixels")
    assert permuted.shape == (2, 4, 3) and np.array_equal(permuted.values, transposed.reshape(5, -1))
    channel = pa.FixedShapeTensorArray.from_numpy_ndarray(images[:, 0][:, None])  # (n, 1, 3, 4): a new axis
    assert channel.type.permutation != [0, 1, 2]  # pyarrow records [1, 2, 0]
    one = read_features(str(write(tmp_path / "one.parquet", pixels=channel)), feature_column="pixels")
    assert one.shape == (1, 3, 4) and np.array_equal(one.values, images[:, 0].reshape(5, -1))


def test_fingerprint_is_stable_and_tracks_content_and_options(tmp_path):
    write(tmp_path / "d1" / "x.parquet", a=[1.0, 2.0], b=[3.0, 4.0])
    shutil.copytree(tmp_path / "d1", tmp_path / "copy")
    first = read_features(str(tmp_path / "d1")).fingerprint
    assert read_features(str(tmp_path / "d1")).fingerprint == first
    assert read_features(str(tmp_path / "copy")).fingerprint == first  # same bytes elsewhere: same data
    assert read_features(str(tmp_path / "d1"), exclude=("a",)).fingerprint != first
    write(tmp_path / "d1" / "x.parquet", a=[1.0, 2.0], b=[3.0, 5.0])
    assert read_features(str(tmp_path / "d1")).fingerprint != first


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or directory"),
    (lambda p: write(p, a=pa.array([], pa.float64())), "no feature rows"),
    (lambda p: write(p, name=["x", "y"], site=["a", "b"]), "no numeric columns besides id, site, time"),
    (lambda p: write(p, a=[1.0, float("nan"), 3.0]), r"1 rows have NaN/inf/null values, first in column 'a' at row 1"),
    (lambda p: write(p, a=[1.0, float("inf")]), "NaN/inf"),
    (lambda p: write(p, a=pa.array([1.0, None])), "NaN/inf/null"),
    (lambda p: write(p, features=[[1.0, 2.0], [1.0]]), "mixes vector lengths"),
    (lambda p: write(p, features=[["a"], ["b"]]), "expected a list of numbers"),
    (lambda p: p.write_bytes(b"not parquet"), "not a readable Parquet file"),
    (lambda p: write(p, a=[1.0], site=["x"]), "no feature rows after filters"),
])
def test_bad_inputs_name_the_file_and_column(tmp_path, make, message):
    path = tmp_path / "bad.parquet"
    make(path)
    filters = {"site": "elsewhere"} if "after filters" in message else None
    with pytest.raises(DataError, match=message) as info:
        read_features(str(path), filters=filters)
    assert str(path) in str(info.value)


def test_mixed_dimensions_across_files_name_both_files(tmp_path):
    write(tmp_path / "ds" / "a.parquet", x=[1.0], y=[2.0])
    write(tmp_path / "ds" / "b.parquet", x=[1.0], y=[2.0], z=[3.0])
    with pytest.raises(DataError, match=r"b.parquet: feature columns .* \(d=3\) differ from .*a.parquet"):
        read_features(str(tmp_path / "ds"))


def test_filter_on_a_missing_column_or_with_a_wrong_type(tmp_path):
    path = write(tmp_path / "t.parquet", a=[1.0, 2.0], site=["s", "t"])
    with pytest.raises(DataError, match="filter column 'plant' not found"):
        read_features(str(path), filters={"plant": "p"})
    with pytest.raises(DataError, match="does not fit column 'a'"):
        read_features(str(path), filters={"a": "text"}, exclude=("site",))


def test_range_filters_keep_the_rows_every_comparison_holds_for(tmp_path):
    """A site as one regime or season of a table: ranges on a number column and on a timestamp column, where the
    bounds come from YAML (a date, not text), beside an equality filter; each against a numpy mask."""
    rng = np.random.default_rng(0)
    speed = rng.normal(size=500).astype(np.float32)
    time = np.datetime64("2015-01-01T00:00", "ms") + np.arange(500) * np.timedelta64(6, "h")  # 125 days
    site = np.where(np.arange(500) % 2, "a", "b")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"site": site, "time": pa.array(time, pa.timestamp("ms", tz="UTC")), "speed": speed}), path)
    windy = read_features(str(path), filters={"site": "a", "speed": {">": 1.0}})
    np.testing.assert_array_equal(windy.values[:, 0], speed[(site == "a") & (speed > 1.0)])
    between = read_features(str(path), filters={"speed": {">=": -0.5, "<=": 0.5}})
    np.testing.assert_array_equal(between.values[:, 0], speed[(speed >= -0.5) & (speed <= 0.5)])
    winter = yaml.safe_load("time: {'>=': 2015-01-01, '<': 2015-03-01}")  # YAML: datetime.date bounds
    assert isinstance(winter["time"][">="], datetime.date)
    february = read_features(str(path), filters=winter)
    np.testing.assert_array_equal(february.values[:, 0], speed[time < np.datetime64("2015-03-01")])
    assert windy.fingerprint != read_features(str(path), filters={"site": "a", "speed": {">": 0.9}}).fingerprint
    with pytest.raises(DataError, match=r"filter on 'speed': a range is a mapping of comparisons \(>, >=, <, <=\)"):
        read_features(str(path), filters={"speed": {"above": 1.0}})
    with pytest.raises(DataError, match="does not fit column 'speed'"):
        read_features(str(path), filters={"speed": {">": "fast"}})


def test_nonfinite_rows_are_dropped_and_counted_only_when_asked(tmp_path):
    path = write(tmp_path / "t.parquet", a=[1.0, float("nan"), 3.0, 4.0], b=[1.0, 2.0, float("-inf"), 4.0])
    features = read_features(str(path), drop_nonfinite=True)
    assert features.rows_dropped == 2
    np.testing.assert_array_equal(features.values, [[1, 1], [4, 4]])


def test_reading_from_s3(s3_server, tmp_path):
    import uuid

    from pipeline.storage import Store

    prefix = f"s3://flowprior-test/data-{uuid.uuid4().hex[:8]}"
    local = write(tmp_path / "p.parquet", a=[1.0, 2.0, 3.0], site=["s1", "s2", "s1"])
    store = Store.open(prefix)
    store.put_file("ds/p.parquet", local)
    features = read_features(f"{prefix}/ds", filters={"site": "s1"})
    np.testing.assert_array_equal(features.values, [[1], [3]])
    assert features.files == [f"{prefix}/ds/p.parquet"]
    assert read_features(f"{prefix}/ds/*.parquet", filters={"site": "s1"}).fingerprint == features.fingerprint
    with pytest.raises(DataError, match=f"{prefix}/nope: no such object or prefix"):
        read_features(f"{prefix}/nope")


def test_hidden_and_temporary_paths_are_skipped_at_any_depth(tmp_path):
    write(tmp_path / "ds" / "year=2014" / "part-0.parquet", a=[1.0, 2.0])
    for hidden in ("_temporary/0/part-9.parquet", "year=2015/_temporary/part-1.parquet", ".staging/p.parquet",
                   "year=2014/.part-0.parquet", "_SUCCESS", "year=2014/_part-2.parquet"):
        (tmp_path / "ds" / hidden).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / hidden).write_bytes(b"half-written")
    features = read_features(str(tmp_path / "ds"))
    assert features.files == [str(tmp_path / "ds" / "year=2014" / "part-0.parquet")]
    assert read_features(str(tmp_path / "ds" / "*" / "*.parquet")).files == features.files


class CountingFS(fsspec.implementations.local.LocalFileSystem):
    """Local disk that counts the bytes read through it."""

    read = 0

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        read = f.read

        def counted(*args):
            data = read(*args)
            CountingFS.read += len(data)
            return data

        f.read = counted
        return f


def test_only_the_feature_and_filter_columns_are_read(tmp_path):
    from pipeline.data.scan import scan_features

    n = 40_000
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"a": np.arange(n, dtype=np.float64), "site": ["s1"] * (n // 2) + ["s2"] * (n // 2),
                             "blob": rng.normal(size=n)}), path, row_group_size=5_000, compression="none")
    scan = scan_features(str(path), exclude=("site", "blob"), filters={"site": "s2"})
    assert scan.read_columns == ("a",)
    fs = pa.fs.PyFileSystem(pa.fs.FSSpecHandler(CountingFS(skip_instance_cache=True)))
    CountingFS.read = 0
    values = np.concatenate([x for x, _ in scan.blocks(scan.files[0], batch_rows=n, filesystem=fs)])
    np.testing.assert_array_equal(values[:, 0], np.arange(n // 2, n))
    # "a" is 320 kB of the file's 775 kB, "blob" as much again: it was never read
    assert CountingFS.read < 0.55 * path.stat().st_size, (CountingFS.read, path.stat().st_size)


def test_the_scan_knows_the_dimension_where_the_footer_says_it(tmp_path):
    from pipeline.data.scan import scan_features

    images = pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((2, 2, 3, 4), np.float32))
    pq.write_table(list_table(np.ones((2, 3)), ["x", "y"]), tmp_path / "fixed.parquet")
    write(tmp_path / "numeric.parquet", a=[1.0, 2.0], b=[3, 4], site=["x", "y"])
    write(tmp_path / "tensor.parquet", pixels=images)
    write(tmp_path / "any.parquet", features=pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float32())))
    dims = {name: scan_features(str(tmp_path / f"{name}.parquet"), feature_column=column).dim
            for name, column in [("numeric", "features"), ("fixed", "features"), ("tensor", "pixels"),
                                 ("any", "features")]}
    assert dims == {"numeric": 2, "fixed": 3, "tensor": 24, "any": None}  # a list of any length: only rows say
