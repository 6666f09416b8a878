"""The held-out split by row hash: a fixed function of the values, binomial in size, layout-free."""

import numpy as np
import pytest

from pipeline.data.split import Split, digest, is_heldout, row_hash, split_indices
from pipeline.errors import DataError


def test_the_split_depends_on_the_values_only():
    x = np.random.default_rng(0).normal(size=(20_000, 4)).astype(np.float32)
    h = row_hash(x, seed=3)
    assert h.dtype == np.uint64 and len(np.unique(h)) == len(x)
    np.testing.assert_array_equal(row_hash(x[::-1], seed=3), h[::-1])  # order and blocks do not matter
    np.testing.assert_array_equal(np.concatenate([row_hash(x[:7], 3), row_hash(x[7:], 3)]), h)
    assert not np.array_equal(row_hash(x, seed=4), h)
    negative_zero = np.array([[-0.0, 1.0]], np.float32)
    assert row_hash(negative_zero, 0) == row_hash(np.abs(negative_zero), 0)
    heldout = is_heldout(h, 0.1)
    assert abs(heldout.sum() - 2000) < 4 * np.sqrt(20_000 * 0.1 * 0.9)  # binomial, 4 sigma
    assert not is_heldout(h, 0.0).any()
    duplicated = np.concatenate([x[:5], x[:5]])
    held = is_heldout(row_hash(duplicated, 3), 0.5)
    np.testing.assert_array_equal(held[:5], held[5:])


def _reference_hash(row: np.ndarray, seed: int) -> int:
    """The documented hash in Python integers, one row at a time: SplitMix64's finaliser folded over the
    columns' float32 bits (-0.0 as 0.0)."""
    mask = 2**64 - 1

    def mix(h: int) -> int:
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        return h ^ (h >> 31)

    h = mix(((seed % 2**64) * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & mask)
    for value in (row.astype(np.float32) + np.float32(0.0)).view(np.uint32):
        h = mix(h ^ int(value))
    return h


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5])
def test_the_vectorised_hash_is_the_documented_one_across_chunks(seed):
    """Rows hashed in chunks of ``HASH_CHUNK`` in place give the per-row definition's values (records
    store splits and digests by it), on both sides of a chunk boundary."""
    from pipeline.data.split import HASH_CHUNK

    rng = np.random.default_rng(seed % 1000)
    x = rng.normal(size=(HASH_CHUNK + 3, 6)).astype(np.float32)
    x[0, 0], x[1, 1] = -0.0, np.inf
    picked = [0, 1, 2, HASH_CHUNK - 1, HASH_CHUNK, HASH_CHUNK + 2]
    h = row_hash(x, seed)
    assert [int(v) for v in h[picked]] == [_reference_hash(x[i], seed) for i in picked]
    assert len(row_hash(x[:0], seed)) == 0


def test_digests_add_up_over_a_partition():
    h = row_hash(np.random.default_rng(1).normal(size=(1000, 3)).astype(np.float32))
    parts = [h[:300], h[300:301], h[301:]]
    assert sum(digest(p) for p in parts) % 2**64 == digest(h)
    assert (digest(h[:300]) + digest(h[299:])) % 2**64 != digest(h)  # a row read twice shows


def test_in_memory_split_indices_follow_the_one_rule_and_refuse_too_few_rows():
    x = np.random.default_rng(2).normal(size=(1000, 3)).astype(np.float32)
    train, heldout = split_indices(x, 0.1, seed=3)
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(1000))
    np.testing.assert_array_equal(heldout, np.flatnonzero(is_heldout(row_hash(x, 3), 0.1)))
    np.testing.assert_array_equal(Split(0.1, 3).of(x)[1], is_heldout(row_hash(x, 3), 0.1))
    with pytest.raises(DataError, match=r"3 rows are too few to split with 10% held out \(need at least 2"):
        split_indices(x[:3], 0.1)
