"""The validating statistics pass of the core prior fit, without Ray: the same answer however the
rows are split into files and blocks, equal to the in-memory fit, and errors that name the row; and the
scan's filters as Ray Data applies them when it streams the training rows."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data import read_features
from pipeline.data.filters import filter_expression
from pipeline.data.scan import scan_features
from pipeline.data.split import Split, digest, is_heldout, row_hash
from pipeline.errors import DataError
from pipeline.jobs.ingest import file_stats
from pipeline.method.prior_space import PriorSpace

SPLIT = Split(heldout_fraction=0.1, seed=7)


def _rows(n: int = 6000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 5)) @ rng.normal(size=(5, 5)) + 10).astype(np.float32)


def _write(folder, x: np.ndarray, parts: int):
    folder.mkdir()
    for k, block in enumerate(np.array_split(x, parts)):
        pq.write_table(pa.table({f"c{j}": block[:, j] for j in range(x.shape[1])}), folder / f"part-{k}.parquet",
                       row_group_size=500)
    return folder


def test_statistics_do_not_depend_on_files_or_blocks_and_match_the_in_memory_fit(tmp_path):
    x = _rows()
    one = scan_features(str(_write(tmp_path / "one", x, 1)))
    many = scan_features(str(_write(tmp_path / "many", x[::-1].copy(), 7)))
    a = file_stats(one, [0], SPLIT, sample=100)
    b = file_stats(many, list(range(7)), SPLIT, sample=100)
    held = is_heldout(row_hash(x, SPLIT.seed), SPLIT.heldout_fraction)
    assert a.train_rows == b.train_rows == (~held).sum() and a.heldout_rows == b.heldout_rows == held.sum()
    assert a.train_digest == b.train_digest == digest(row_hash(x[~held], SPLIT.seed))
    np.testing.assert_array_equal(a.sample_hash, b.sample_hash)  # the same bounded held-out sample
    assert len(a.sample) == 100 and is_heldout(row_hash(a.sample, SPLIT.seed), SPLIT.heldout_fraction).all()
    np.testing.assert_allclose(a.train.m2, b.train.m2, rtol=1e-9)
    # the map to prior space from the streamed moments equals today's in-memory fit on the training rows
    train = torch.from_numpy(read_features(str(tmp_path / "one")).values[~held])
    for kind in ("pca", "random"):
        streamed, direct = PriorSpace.fit(b.train, 3, kind, "per-dim"), PriorSpace.fit(train, 3, kind, "per-dim")
        for name, tensor in streamed.tensors().items():
            torch.testing.assert_close(tensor, direct.tensors()[name], atol=1e-5, rtol=1e-5)


def test_a_bad_row_is_named_by_file_and_row_across_blocks(tmp_path):
    x = _rows(3000)
    x[2345, 3] = np.inf
    scan = scan_features(str(_write(tmp_path / "ds", x, 2)))  # rows 1500.. are part-1's rows 0..
    with pytest.raises(DataError, match=r"part-1.parquet: 1 rows have NaN/inf/null values, first in column 'c3' "
                                        r"at row 845 \(inf\)"):
        for source in scan.files:
            list(scan.blocks(source, batch_rows=100))
    dropping = scan_features(str(tmp_path / "ds"), drop_nonfinite=True)
    stats = file_stats(dropping, [0, 1], SPLIT, sample=10)
    assert stats.rows_dropped == 1 and stats.train_rows + stats.heldout_rows == 2999


def test_ray_data_keeps_the_rows_the_parquet_reader_keeps(local_ray, tmp_path):
    """The training stream filters with Ray Data's expressions, the in-memory read with pyarrow's: an equality
    filter on a list of values and a range give the same rows both ways."""
    import ray.data
    from ray.data.expressions import col

    x = _rows(2000)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"plant": np.arange(2000) % 3, **{f"c{j}": x[:, j] for j in range(5)}}), path)
    filters = {"plant": [0, 2], "c0": {">=": 9.0, "<": 12.0}}
    scan = scan_features(str(path), columns=["c0", "c1"], filters=filters)
    streamed = ray.data.read_parquet(str(path)).filter(expr=filter_expression(scan.filters, col)).to_pandas()
    np.testing.assert_array_equal(streamed[["c0", "c1"]].to_numpy(), read_features(str(path), columns=["c0", "c1"],
                                                                                   filters=filters).values)
    assert 0 < len(streamed) < 2000
