import pytest
import torch

from pipeline.method.transforms import normaliser_stats, projection_matrix


def test_random_projection_is_seeded_and_scaled():
    x = torch.randn(100, 400)
    p = projection_matrix("random", x, 50, seed=3)
    assert p.shape == (50, 400)
    assert torch.equal(p, projection_matrix("random", x, 50, seed=3))
    assert not torch.equal(p, projection_matrix("random", x, 50, seed=4))
    assert p.var().item() == pytest.approx(1 / 400, rel=0.05)  # entries N(0, 1/d2)


def test_pca_finds_the_top_axes_with_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.5])
    basis = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
    x = (torch.randn(5000, 4, generator=g) * scales) @ basis.T
    p = projection_matrix("pca", x, 2)
    assert torch.allclose(p @ p.T, torch.eye(2), atol=1e-5)  # orthonormal rows
    assert torch.allclose((p @ basis[:, :2]).abs(), torch.eye(2), atol=0.02)  # the top-2 axes
    assert torch.allclose(p, projection_matrix("pca", x[torch.randperm(5000)], 2), atol=1e-4)  # sign fixed
    assert (p.gather(1, p.abs().argmax(1, keepdim=True)) > 0).all()


def test_pool_averages_contiguous_groups():
    x = torch.arange(12, dtype=torch.float32)[None, :]
    p = projection_matrix("pool", x, 4)
    assert torch.allclose(p.sum(1), torch.ones(4))
    assert torch.allclose(x @ p.T, torch.tensor([[1.0, 4.0, 7.0, 10.0]]))
    uneven = projection_matrix("pool", torch.zeros(1, 5), 2)  # adaptive: [0, 3) and [2, 5)
    assert torch.allclose(uneven.sum(1), torch.ones(2))


def test_projection_errors_are_clear():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="unknown projection 'svd'"):
        projection_matrix("svd", x, 2)
    with pytest.raises(ValueError, match=r"latent_dim must be in \[1, 4\]"):
        projection_matrix("random", x, 5)
    with pytest.raises(ValueError, match="needs latent_dim == feature dim"):
        projection_matrix("none", x, 2)
    assert torch.equal(projection_matrix("none", x, 4), torch.eye(4))


def test_normalisers():
    z = torch.randn(20_000, 3) * torch.tensor([1.0, 2.0, 4.0]) + 7
    mean, scale = normaliser_stats(z, "global")
    normed = (z - mean) / scale
    assert torch.allclose(normed.mean(0), torch.zeros(3), atol=1e-4)
    assert normed.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # one global scale
    assert normed.std(0)[2] / normed.std(0)[0] == pytest.approx(4.0, rel=0.05)  # ratios kept
    mean, scale = normaliser_stats(z, "per-dim")
    assert torch.allclose(((z - mean) / scale).std(0), torch.ones(3), atol=1e-3)
    with pytest.raises(ValueError, match="zero variance"):
        normaliser_stats(torch.ones(5, 2))
    with pytest.raises(ValueError, match="unknown normaliser"):
        normaliser_stats(z, "minmax")
