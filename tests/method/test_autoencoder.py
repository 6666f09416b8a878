"""Conv and KL-regularised autoencoders: shapes, layout validation, the KL term's closed form, alignment on
images, and checkpoints (old MLP ones included)."""

import pytest
import torch

from pipeline.errors import SpecError
from pipeline.method.autoencoder import Autoencoder
from pipeline.method.configs import AlignConfig, EncoderConfig, EncoderLayout, FitConfig
from pipeline.method.encoder import load_encoder, save_encoder, train_encoder
from pipeline.method.prior import FlowPrior

CONV = EncoderLayout(kind="conv", widths=(8, 16), image_shape=(1, 8, 8))


def blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 64)`` (1 x 8 x 8, flattened) of a Gaussian blob at position ``p`` ``(n, 2)`` in [1.5, 5.5]^2."""
    g = torch.Generator().manual_seed(seed)
    p = 1.5 + 4 * torch.rand(n, 2, generator=g)
    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)  # (8, 8, 2)
    images = torch.exp(-((grid[None] - p[:, None, None]) ** 2).sum(-1) / 2)  # (n, 8, 8)
    return images.reshape(n, 64), p


def test_conv_autoencoder_maps_images_to_latents_and_back():
    model = Autoencoder(EncoderConfig(64, 3, CONV))
    images, _ = blobs(5)
    y, reconstruction, kl = model(images)
    assert y.shape == (5, 3) and reconstruction.shape == (5, 64) and kl.tolist() == [0.0] * 5
    assert torch.equal(model.encode(images), y)


@pytest.mark.parametrize(("layout", "message"), [
    (dict(kind="conv", widths=(8, 16)), "needs image_shape"),
    (dict(kind="conv", widths=(8, 16, 32), image_shape=(1, 28, 28)), "divisible by 8"),
    (dict(kind="mlp", image_shape=(1, 8, 8)), "for kind conv"),
    (dict(kind="transformer"), "must be one of mlp, conv"),
    (dict(kl=-1.0), "kl must be"),
])
def test_bad_layouts_are_refused(layout, message):
    with pytest.raises(SpecError, match=message):
        EncoderLayout(**layout)


def test_images_of_another_size_are_refused():
    with pytest.raises(SpecError, match=r"image_shape \[1, 8, 8\] holds 64 values per row, but the observations "
                                        r"have 100 columns"):
        EncoderConfig(100, 3, CONV)


def test_the_kl_term_is_the_closed_form_and_encode_gives_the_mean():
    model = Autoencoder(EncoderConfig(64, 3, EncoderLayout(kind="conv", widths=(8,), image_shape=(1, 8, 8), kl=0.1)))
    images, _ = blobs(4)
    mu, log_var = model.posterior(images)
    y, _, kl = model(images, torch.Generator().manual_seed(0))
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl, expected, atol=1e-5)
    assert torch.equal(model.encode(images), mu) and not torch.allclose(y, mu)  # training decodes a sample


def test_old_mlp_checkpoints_and_new_conv_ones_load(tmp_path):
    config = EncoderConfig.from_dict({"obs_dim": 10, "latent_dim": 4, "widths": [16, 16]})  # an older record's
    assert config.layout == EncoderLayout(widths=(16, 16)) and config.to_dict() == {
        "obs_dim": 10, "latent_dim": 4, "widths": [16, 16]}
    layout = EncoderLayout(kind="conv", widths=(8, 16), image_shape=(1, 8, 8), kl=0.01)
    model = Autoencoder(EncoderConfig(64, 3, layout))
    save_encoder(model, tmp_path / "conv.safetensors")
    loaded = load_encoder(tmp_path / "conv.safetensors")
    images, _ = blobs(6)
    assert loaded.config == model.config and torch.equal(loaded.encode(images), model.encode(images))


@pytest.mark.slow
def test_a_conv_encoder_reconstructs_images_and_alignment_moves_its_latents_to_the_prior():
    """Blob images whose positions are the prior's 2-D target: aligned latents score a lower L_align than a
    plain conv autoencoder's, which still reconstructs (error well under the images' variance)."""
    images, positions = blobs(3000)
    prior = FlowPrior.fit(positions, width=64, depth=2, fit=FitConfig(steps=800, warmup=50, lr=2e-3), seed=0)
    z = prior.to_prior(positions)
    runs = {lam: train_encoder(images, prior, AlignConfig(lam=lam, steps=400, lr=3e-3, log_every=400,
                                                           eval_points=1000), z, layout=CONV, seed=0)
            for lam in (0.0, 0.5)}
    plain, aligned = runs[0.0].metrics, runs[0.5].metrics
    assert plain["recon"] < 0.2 and aligned["recon"] < 0.5  # in units of the pixels' variance
    assert aligned["l_align"] < 0.7 * plain["l_align"]
    assert aligned["knn_nll"] < plain["knn_nll"]
