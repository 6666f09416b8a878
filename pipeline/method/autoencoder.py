"""A site's autoencoder: ``o -> y = E((o - centre) / scale) -> D(y) * scale + centre``, an MLP on rows of
numbers or a small convolutional network on images (:class:`~pipeline.method.configs.EncoderLayout`).

Observations are always rows ``o`` ``(n, d_obs)``; a conv autoencoder views each row as an image
``(C, H, W)`` (row-major, as a Parquet column of fixed-shape arrays holds it). Its encoder is ``len(widths)``
stride-2 4x4 convolutions (each halves ``H`` and ``W``) and a linear map to the latent; its decoder mirrors it
with transposed convolutions. With ``kl > 0`` the encoder gives a Gaussian ``q(y | o) = N(mu, diag(sigma^2))``
(twice the outputs: ``mu`` and ``log sigma^2``), training decodes the sample ``y = mu + sigma eps`` and adds

    KL(q(y | o) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2),

and :meth:`Autoencoder.encode` gives ``mu`` (the paper's KL-regularised baseline).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from pipeline.method.configs import EncoderConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _conv_encoder(image_shape: tuple[int, ...], widths: tuple[int, ...], out: int) -> nn.Sequential:
    channels, height, width = image_shape
    layers: list[nn.Module] = [nn.Unflatten(1, image_shape)]  # (n, C*H*W) -> (n, C, H, W)
    for a, b in itertools.pairwise((channels, *widths)):
        layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]  # (n, b, h/2, w/2)
    cells = (height >> len(widths)) * (width >> len(widths))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * cells, out))  # (n, out)


def _conv_decoder(image_shape: tuple[int, ...], widths: tuple[int, ...], latent_dim: int) -> nn.Sequential:
    channels, height, width = image_shape
    h, w = height >> len(widths), width >> len(widths)
    layers: list[nn.Module] = [nn.Linear(latent_dim, widths[-1] * h * w), nn.SiLU(),
                               nn.Unflatten(1, (widths[-1], h, w))]  # (n, C_last, h, w)
    stages = list(itertools.pairwise((*reversed(widths), channels)))
    for i, (a, b) in enumerate(stages):
        layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))  # (n, b, 2h, 2w)
        if i < len(stages) - 1:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers, nn.Flatten())  # (n, C*H*W)


class Autoencoder(nn.Module):
    """``o -> y = E((o - centre) / scale) -> D(y) * scale + centre`` (module docstring)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        layout, d, obs = config.layout, config.latent_dim, config.obs_dim
        out = 2 * d if layout.kl else d  # a variational encoder gives mu and log sigma^2
        if layout.kind == "conv":
            self.encoder = _conv_encoder(layout.image_shape, layout.widths, out)
            self.decoder = _conv_decoder(layout.image_shape, layout.widths, d)
        else:
            self.encoder = _mlp([obs, *layout.widths, out])
            self.decoder = _mlp([d, *reversed(layout.widths), obs])
        self.register_buffer("centre", torch.zeros(obs))
        self.register_buffer("scale", torch.ones(obs))

    def fit_scaling(self, o: torch.Tensor) -> None:
        """Rows of numbers, per column: centre the median, scale ``max(1.4826 MAD, (q_0.99 - q_0.01) / 4.6527)``
        (1 where both are 0): each is the standard deviation for Gaussian data, and neither moves much with under
        1% wild readings. The quantile range covers columns that sit at one value most of the time (a blade pitch
        at rest), whose MAD is ~0 and would scale ordinary readings to thousands. Images (conv): one centre and
        scale for every pixel, the mean and standard deviation of all values (a per-pixel scale would blow up
        the borders, which are nearly constant)."""
        if self.config.layout.kind == "conv":
            centre, scale = o.mean().expand(o.shape[1]), o.std().expand(o.shape[1])
        else:
            centre = o.median(dim=0).values
            mad = (o - centre).abs().median(dim=0).values * 1.4826
            n = len(o)  # order statistics (torch.quantile refuses inputs over 16M elements)
            q_01, q_99 = (o.kthvalue(max(1, math.ceil(q * n)), dim=0).values for q in (0.01, 0.99))
            scale = torch.maximum(mad, (q_99 - q_01) / (2 * 2.3263))  # z_0.99 = 2.3263
        self.centre.copy_(centre)
        self.scale.copy_(torch.where(scale > 1e-8, scale, torch.ones_like(scale)))

    def posterior(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mu`` ``(n, d1)`` and ``log sigma^2`` ``(n, d1)`` of ``q(y | o)`` (None: a deterministic encoder)."""
        h = self.encoder((o - self.centre) / self.scale)
        if not self.config.layout.kl:
            return h, None
        mu, log_var = h.chunk(2, dim=-1)
        return mu, log_var.clamp(-30.0, 20.0)

    def encode(self, o: torch.Tensor) -> torch.Tensor:
        """Latents ``(n, d1)`` of observations ``(n, d_obs)`` (a variational encoder's mean)."""
        return self.posterior(o)[0]

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(y) * self.scale + self.centre

    def reconstruction_error(self, o: torch.Tensor) -> torch.Tensor:
        """Per-row squared error ``(n,)`` in standardised units, averaged over columns."""
        return ((self.decode(self.encode(o)) - o) / self.scale).pow(2).mean(-1)

    def forward(self, o: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For training: latents ``y`` ``(n, d1)`` (a sample of ``q(y | o)`` for a variational encoder), their
        decoding ``(n, d_obs)`` and ``KL(q(y | o) || N(0, I))`` ``(n,)`` (zeros for a deterministic encoder)."""
        mu, log_var = self.posterior(o)
        if log_var is None:
            return mu, self.decode(mu), mu.new_zeros(len(mu))
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        y = mu + (0.5 * log_var).exp() * eps
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
        return y, self.decode(y), kl

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
