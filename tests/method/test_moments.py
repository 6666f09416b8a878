"""Streaming moments against the in-memory formulas."""

import numpy as np
import pytest

from pipeline.method.moments import Moments


def test_merged_blocks_equal_the_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)) * [1, 2, 3, 4, 5] + 1e4  # a large offset: raw sums would cancel badly
    merged = Moments.empty(5)
    for block in np.array_split(x, [3, 10, 400, 401, 999]):
        merged = merged.merge(Moments.of(block))
    assert merged.n == 1000
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(x.T, bias=True), rtol=1e-9)
    np.testing.assert_allclose(Moments.of(x).project(np.eye(5)[:2]).covariance, np.cov(x[:, :2].T, bias=True),
                               rtol=1e-9)
    with pytest.raises(ValueError, match="dimension 5 and 3"):
        merged.merge(Moments.of(x[:, :3]))

