import math

import numpy as np
import pytest
import torch

from pipeline import FitConfig, FlowPrior
from pipeline.errors import CheckpointError
from pipeline.method.checkpoint import file_sha256
from tests.support.oracles import seeded

SMALL = dict(width=48, depth=2, fit=FitConfig(steps=600, batch_size=256, lr=3e-3, warmup=50, log_every=300))


@pytest.fixture(scope="module")
def gaussian_prior() -> tuple[FlowPrior, torch.Tensor]:
    """A prior fitted on N(mu, diag(s^2)) features in 2-D."""
    x = torch.randn((8000, 2), generator=seeded(0)) * torch.tensor([2.0, 1.0]) + torch.tensor([3.0, -1.0])
    return FlowPrior.fit(x, **SMALL), x


def test_fit_reaches_the_flow_matching_minimum_of_a_gaussian(gaussian_prior):
    prior, x = gaussian_prior
    x_new = torch.randn((5000, 2), generator=seeded(1)) * torch.tensor([2.0, 1.0]) + torch.tensor([3.0, -1.0])
    z = prior.to_prior(x_new)
    # after the global normaliser the per-dimension stds are s_j = (2, 1) / sqrt(2.5); the FM
    # minimum is sum_j pi s_j / 2 (closed form, tests/support/oracles.py)
    minimum = sum(math.pi * s / 2 for s in (2 / math.sqrt(2.5), 1 / math.sqrt(2.5)))
    held_out = prior.flow_matching_loss(z, draws=8, generator=seeded(2)).item()
    assert minimum <= held_out * 1.01 and held_out < minimum * 1.08
    samples = prior.sample(4000, generator=seeded(3))
    assert torch.allclose(samples.std(0), z.std(0), rtol=0.1)
    assert prior.info["history"][-1]["step"] == 600


def test_alignment_loss_reaches_latents_only(gaussian_prior):
    prior, _ = gaussian_prior
    y = torch.randn(10, 2, requires_grad=True)
    loss = prior.alignment_loss(y, draws=4)
    assert loss.shape == (10,)
    loss.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.velocity.parameters())


def test_projection_defaults_and_options():
    x = torch.randn(300, 8)
    tiny = dict(width=8, depth=1, fit=FitConfig(steps=2, warmup=1, log_every=1))
    assert FlowPrior.fit(x, **tiny).info["projection"] == "none"
    for kind in ("random", "pca", "pool"):
        prior = FlowPrior.fit(x, latent_dim=3, projection=kind, **tiny)
        assert prior.latent_dim == 3 and prior.feature_dim == 8
        assert prior.to_prior(x).shape == (300, 3)
    assert FlowPrior.fit(x, latent_dim=3, **tiny).info["projection"] == "random"


def test_save_load_round_trip(tmp_path, gaussian_prior):
    prior, x = gaussian_prior
    path = tmp_path / "prior.safetensors"
    sha = prior.save(path)
    assert sha == file_sha256(path) and not list(tmp_path.glob("*.tmp"))
    loaded = FlowPrior.load(path, expected_sha256=sha)
    y, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(loaded.velocity(y, t), prior.velocity(y, t))
    assert torch.equal(loaded.to_prior(x[:5]), prior.to_prior(x[:5]))
    assert loaded.info["fit"] == prior.info["fit"]


def test_tampered_checkpoints_are_refused(tmp_path, gaussian_prior):
    prior, _ = gaussian_prior
    path = tmp_path / "prior.safetensors"
    sha = prior.save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # flip one bit in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        FlowPrior.load(path)
    with pytest.raises(CheckpointError, match="file hash does not match"):
        FlowPrior.load(path, expected_sha256=sha)


def test_non_checkpoints_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "ran"
    pickled = tmp_path / "evil.safetensors"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, pickled)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        FlowPrior.load(pickled)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        FlowPrior.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}, "NaN/inf values in 1 rows"),
        (torch.tensor([[0.0, float("inf")], [1.0, 2.0], [2.0, 1.0]]), {}, "first at row 0"),
        (torch.randn(10), {}, r"shape \(n, d\)"),
        (torch.zeros(0, 3), {}, "empty"),
        (torch.randn(1, 3), {}, "at least 2 rows"),
        ("not a tensor", {}, "torch.Tensor or numpy"),
        (torch.randn(10, 3), {"projection": "svd", "latent_dim": 2}, "unknown projection"),
        (torch.randn(10, 3), {"latent_dim": 9}, "latent_dim must be in"),
        (torch.randn(10, 3), {"normaliser": "minmax"}, "unknown normaliser"),
    ],
)
def test_bad_fit_inputs_are_named(x, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FlowPrior.fit(x, width=8, depth=1, fit=FitConfig(steps=1, warmup=1, log_every=1), **kwargs)


def test_numpy_features_are_accepted_and_wrong_dims_refused(gaussian_prior):
    prior, _ = gaussian_prior
    assert prior.to_prior(np.zeros((3, 2))).shape == (3, 2)
    with pytest.raises(ValueError, match="dimension 3, expected 2"):
        prior.to_prior(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"latents must have shape \(n, 2\)"):
        prior.alignment_loss(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"latents must have shape"):
        prior.log_likelihood(torch.zeros(4))
    with pytest.raises(ValueError, match="FitConfig.steps"):
        FitConfig(steps=0)


def test_learning_rate_schedule():
    config = FitConfig(steps=1000, lr=1.0, warmup=100)
    assert config.lr_at(0) == pytest.approx(0.01)
    assert config.lr_at(99) == pytest.approx(1.0)
    assert config.lr_at(550) == pytest.approx(0.5)
    assert config.lr_at(999) < 1e-4
