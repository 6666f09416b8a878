"""Streaming moments and the map to prior space fitted from them, against the in-memory formulas."""

import numpy as np
import pytest
import torch

from pipeline.method.moments import Moments
from pipeline.method.transforms import fit_transform


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


@pytest.mark.parametrize("projection, normaliser", [("pca", "global"), ("pca", "per-dim"), ("random", "global"),
                                                    ("pool", "per-dim"), ("none", "global")])
def test_the_map_from_streamed_moments_equals_the_in_memory_fit(projection, normaliser):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2]) @ torch.linalg.qr(
        torch.randn(6, 6, generator=g))[0].T + 3.0
    latent_dim = 6 if projection == "none" else 3
    blocks = Moments.empty(6)
    for block in torch.split(x, 700):
        blocks = blocks.merge(Moments.of(block))
    p, mean, scale = fit_transform(blocks, latent_dim, projection, normaliser, seed=1)
    # the in-memory oracle: SVD of the centred data, and the normaliser on the projected rows
    if projection == "pca":
        vh = torch.linalg.svd((x - x.mean(0)).double(), full_matrices=False)[2][:latent_dim]
        vh = vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
        torch.testing.assert_close(p, vh.float(), atol=1e-5, rtol=1e-5)
    z = x @ p.T
    centred = z - z.mean(0)
    if normaliser == "global":
        expected = centred.pow(2).mean().sqrt().expand(latent_dim)
    else:
        expected = centred.pow(2).mean(0).sqrt()
    torch.testing.assert_close(mean, z.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scale, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fit_transform(x, latent_dim, projection, normaliser, seed=1)[1], mean)
