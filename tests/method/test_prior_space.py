"""``PriorSpace``: fitted from streamed moments as from rows in memory, applied to tensors and numpy
blocks alike, saved and loaded without change."""

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, DataError, SpecError
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace


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
    space = PriorSpace.fit(blocks, latent_dim, projection, normaliser, seed=1)
    p, mean, scale = space.projection, space.mean, space.scale
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
    assert space.kind == projection and space.normaliser == normaliser
    torch.testing.assert_close(PriorSpace.fit(x, latent_dim, projection, normaliser, seed=1).mean, mean)
    torch.testing.assert_close(space.apply(x), (z - mean) / scale)


def test_defaults_identity_when_the_dimensions_agree_else_a_seeded_random_projection():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    same = PriorSpace.fit(x)
    assert same.kind == "none" and torch.equal(same.projection, torch.eye(4))
    smaller = PriorSpace.fit(x, latent_dim=2, seed=5)
    assert smaller.kind == "random" and smaller.projection.shape == (2, 4)
    assert torch.equal(smaller.projection, PriorSpace.fit(x, latent_dim=2, seed=5).projection)
    assert not torch.equal(smaller.projection, PriorSpace.fit(x, latent_dim=2, seed=6).projection)
    z = same.apply(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert z.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # global: unit variance on average


def test_numpy_blocks_and_tensors_map_to_the_same_points():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * 2 - 4
    space = PriorSpace.fit(x, latent_dim=3, projection="pca", normaliser="per-dim")
    from_numpy = space.apply(x.numpy())
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (300, 3)
    np.testing.assert_allclose(from_numpy, space.apply(x).numpy(), rtol=1e-6, atol=1e-6)


def test_save_and_load_round_trip_and_refuse_another_kind(tmp_path):
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2))
    space = PriorSpace.fit(x, latent_dim=2, projection="pool", normaliser="per-dim")
    sha = space.save(tmp_path / "space.safetensors")
    loaded = PriorSpace.load(tmp_path / "space.safetensors", expected_sha256=sha)
    assert (loaded.kind, loaded.normaliser) == ("pool", "per-dim")
    for name, tensor in space.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor)
    from pipeline.method.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other.safetensors", "flowprior.prior/v1", {}, space.tensors())
    with pytest.raises(CheckpointError, match="expected a 'flowprior.prior-space/v1' checkpoint"):
        PriorSpace.load(tmp_path / "other.safetensors")


def test_bad_settings_and_constant_features_are_the_users_errors():
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(3))
    with pytest.raises(SpecError, match="needs latent_dim == feature dim"):
        PriorSpace.fit(x, latent_dim=2, projection="none")
    with pytest.raises(SpecError, match=r"latent_dim must be in \[1, 4\]"):
        PriorSpace.fit(x, latent_dim=5)
    with pytest.raises(DataError, match="zero variance"):
        PriorSpace.fit(torch.ones(100, 4))
    with pytest.raises(ValueError, match="inconsistent prior space"):
        PriorSpace(torch.eye(3), torch.zeros(2), torch.ones(3))
