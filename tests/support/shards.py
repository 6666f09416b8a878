"""Checking what the Train workers report about the rows they read (see ``prior_fit_worker.epoch_batches``)."""

from __future__ import annotations

import numpy as np


def assert_disjoint_shards(ingest: dict, train_hashes: np.ndarray) -> None:
    """The workers' first epochs together read every training row exactly once, except the at most
    ``workers - 1`` rows Ray Data's equal split leaves out: their row counts are equal and add up to
    the training rows less that remainder, and the hash digests add up to the training rows' digest
    less the hashes of exactly that many training rows (checked by membership for one left-out row)."""
    shards, total = ingest["shards"], ingest["train_rows"]
    assert total == len(train_hashes)
    workers = len(shards)
    left_out = total % workers
    assert [s["rank"] for s in shards] == list(range(workers))
    assert len({s["rows"] for s in shards}) == 1 and sum(s["rows"] for s in shards) == total - left_out
    assert int(ingest["train_digest"], 16) == int(train_hashes.sum(dtype=np.uint64))
    missing = (int(ingest["train_digest"], 16) - sum(int(s["digest"], 16) for s in shards)) % 2**64
    if left_out == 0:
        assert missing == 0
    elif left_out == 1:
        assert missing in set(train_hashes.tolist())  # exactly one training row was left out, none read twice
