"""A file's statistics kept by the validating pass and used again only for the same bytes read the same way
(without Ray: the task body, ``file_stats``, on a local store)."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.scan import scan_features
from pipeline.data.split import Split
from pipeline.errors import DataError
from pipeline.jobs import validated_files
from pipeline.jobs.ingest import file_stats
from pipeline.storage import Store
from pipeline.storage.layout import VALIDATED

SPLIT = Split(heldout_fraction=0.2, seed=3)


def _write(path, x: np.ndarray) -> None:
    pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(x.shape[1])}), path, row_group_size=200)


def _same(a, b) -> None:
    assert (a.train_rows, a.heldout_rows, a.train_digest, a.rows_dropped) == \
           (b.train_rows, b.heldout_rows, b.train_digest, b.rows_dropped)
    np.testing.assert_array_equal(a.train.mean, b.train.mean)
    np.testing.assert_array_equal(a.train.m2, b.train.m2)
    np.testing.assert_array_equal(a.sample, b.sample)
    np.testing.assert_array_equal(a.sample_hash, b.sample_hash)


def test_a_second_pass_uses_the_kept_statistics_until_a_file_or_a_setting_changes(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "features"
    folder.mkdir()
    for k in range(3):
        _write(folder / f"part-{k}.parquet", rng.normal(size=(900, 4)).astype(np.float32))
    store = Store.open(str(tmp_path / "store"))
    scan = scan_features(str(folder))
    first = file_stats(scan, [0, 1, 2], SPLIT, 50, validated=store)
    again = file_stats(scan, [0, 1, 2], SPLIT, 50, validated=store)
    assert (first.files_validated_before, again.files_validated_before) == (0, 3)
    _same(again, first)
    _same(again, file_stats(scan, [0, 1, 2], SPLIT, 50))  # and equal to a pass that keeps nothing

    _write(folder / "part-1.parquet", rng.normal(size=(900, 4)).astype(np.float32))  # new bytes in one file
    changed = scan_features(str(folder))
    after = file_stats(changed, [0, 1, 2], SPLIT, 50, validated=store)
    assert after.files_validated_before == 2 and after.train_digest != first.train_digest
    _same(after, file_stats(changed, [0, 1, 2], SPLIT, 50))
    # another split, sample size or filter is another reading of the same bytes
    assert file_stats(changed, [0], Split(0.2, seed=4), 50, validated=store).files_validated_before == 0
    assert file_stats(changed, [0], SPLIT, 49, validated=store).files_validated_before == 0
    filtered = scan_features(str(folder), filters={"c0": {">": 0.0}})
    assert file_stats(filtered, [0], SPLIT, 50, validated=store).files_validated_before == 0


def test_a_file_with_a_bad_row_is_read_and_named_every_time(tmp_path):
    x = np.random.default_rng(1).normal(size=(500, 3)).astype(np.float32)
    x[321, 2] = np.nan
    _write(tmp_path / "bad.parquet", x)
    store = Store.open(str(tmp_path / "store"))
    scan = scan_features(str(tmp_path / "bad.parquet"))
    for _ in range(2):
        with pytest.raises(DataError, match=r"bad.parquet.*'c2' at row 321"):
            file_stats(scan, [0], SPLIT, 50, validated=store)
    assert store.list(VALIDATED) == []


def test_an_entry_that_would_need_pickle_is_refused(tmp_path):
    """Entries load with ``allow_pickle=False``: an object array planted at a file's key is an error, never run."""
    _write(tmp_path / "f.parquet", np.ones((10, 2), np.float32))
    store = Store.open(str(tmp_path / "store"))
    scan = scan_features(str(tmp_path / "f.parquet"))
    planted = io.BytesIO()
    np.savez(planted, n=np.array([object()], dtype=object))
    store.create(validated_files.entry_key(scan, scan.files[0], SPLIT, 50), planted.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        file_stats(scan, [0], SPLIT, 50, validated=store)
