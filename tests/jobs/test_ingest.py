"""The validating statistics pass of the core prior fit, without Ray: the same answer however the
rows are split into files and blocks, equal to the in-memory fit, and errors that name the row; and the
training stream through Ray Data, which reads the rows that pass validated."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data import read_features
from pipeline.data.scan import scan_features
from pipeline.data.split import Split, digest, is_heldout, row_hash
from pipeline.errors import DataError
from pipeline.jobs.handoff import Handoff
from pipeline.jobs.ingest import file_stats, gather_stats, training_dataset
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


@pytest.mark.parametrize("beside_training", [False, True])
def test_the_pass_as_ray_tasks_merges_every_file_once(local_ray, tmp_path, beside_training):
    """Seven files in six tasks: 1-CPU tasks all queued at once, or (beside a starting Train run) 0-CPU tasks the
    driver keeps one per cluster CPU running, topped up as each ends; the same statistics either way."""
    x = _rows()
    scan = scan_features(str(_write(tmp_path / "many", x, 7)))
    direct = file_stats(scan, list(range(7)), SPLIT, sample=100)
    merged = gather_stats(scan, SPLIT, sample=100, say=lambda _: None, beside_training=beside_training)
    assert (merged.files, merged.train_rows, merged.heldout_rows) == (7, direct.train_rows, direct.heldout_rows)
    assert merged.train_digest == direct.train_digest
    np.testing.assert_array_equal(merged.sample_hash, direct.sample_hash)
    np.testing.assert_allclose(merged.train.m2, direct.train.m2, rtol=1e-9)


@pytest.mark.parametrize("handed_off", [False, True])
def test_the_training_stream_is_the_validated_training_rows_in_prior_space(local_ray, tmp_path, handed_off):
    """Ray Data reads each file as the validating pass does: over three files, with a filter and a row dropped
    for NaN, every epoch streams exactly the training rows the pass counted (number and digest), each
    mapped to prior space: the one given, or the one a :class:`Handoff` holds once the pass put it there."""
    x = _rows(3000)
    x[5, 1] = np.nan
    plant = np.arange(3000) % 3
    folder = tmp_path / "t"
    folder.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(3000), 3)):
        pq.write_table(pa.table({"plant": plant[rows], **{f"c{j}": x[rows, j] for j in range(5)}}),
                       folder / f"part-{k}.parquet", row_group_size=300)
    columns, filters = [f"c{j}" for j in range(5)], {"plant": [0, 2]}
    scan = scan_features(str(folder), columns=columns, filters=filters, drop_nonfinite=True)
    stats = file_stats(scan, [0, 1, 2], SPLIT, 100)
    space = PriorSpace.fit(stats.train, 3, "pca")
    kept = read_features(str(folder), columns=columns, filters=filters, drop_nonfinite=True).values
    h, held = SPLIT.of(kept)
    expected = space.apply(torch.from_numpy(kept[~held])).numpy()[np.argsort(h[~held])]  # (n_train, 3)
    handoff = Handoff.start() if handed_off else None
    dataset = training_dataset(scan, SPLIT, handoff or space, seed=0)
    if handoff:
        handoff.put(space=space.arrays())
    for _ in range(2):  # two executions: two epochs
        batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        z, row = np.concatenate([b["z"] for b in batches]), np.concatenate([b["row"] for b in batches]).view(np.uint64)
        assert len(row) == stats.train_rows and digest(row) == stats.train_digest
        np.testing.assert_allclose(z[np.argsort(row)], expected, rtol=1e-5, atol=1e-5)
