"""The velocity network ``v_theta(x, t)``: an MLP of residual AdaLN blocks (DiT style).

Each block is

    h = LayerNorm(x) * (1 + scale(c)) + shift(c)
    x = x + gate(c) * Linear(SiLU(Linear(h)))

with ``c`` the embedding of ``t``: sinusoidal features of ``1000 t`` followed by a 2-layer
MLP. The modulation layers and the output layer start at zero, so an untrained network is
the identity residual stack and predicts ``v = 0``.

**Shared times.** ``t`` may have one entry per row, ``(n,)``, or one per group of rows, ``(g,)``
with ``g`` dividing ``n``: ``t[i]`` is the time of rows ``i k .. (i + 1) k - 1``, ``k = n / g``. The
time embedding and the modulations (60% of a block's FLOPs at one ``t`` per row) are then computed
``g`` times instead of ``n``; the result equals the per-row call with ``t.repeat_interleave(k)``.
Training uses it through ``FitConfig.t_group`` (stratified shared times, see ``losses``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.method.configs import VelocityConfig

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as 1000 t, so the frequencies resolve small steps


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of ``TIME_SCALE * t``: ``(n,) -> (n, dim)``, ``[cos | sin]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half
    )  # (half,)
    angles = TIME_SCALE * t[:, None] * freqs[None, :]  # (n, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (n, dim)


class TimeEmbedding(nn.Module):
    """``t -> c``: sinusoidal features, then Linear, SiLU, Linear."""

    def __init__(self, width: int, frequency_dim: int) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.frequency_dim))


class AdaLNBlock(nn.Module):
    """Residual MLP block with shift/scale/gate modulation from the time embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` ``(g, k, width)``: ``g`` groups of ``k`` rows; ``c`` ``(g, width)``, one per group."""
        shift, scale, gate = self.modulation(c).unsqueeze(1).chunk(3, dim=-1)  # 3 x (g, 1, width)
        h = self.norm(x) * (1 + scale) + shift
        return x + gate * self.mlp(h)


class VelocityMLP(nn.Module):
    """``v_theta(x, t)``: ``(n, dim), (n,) -> (n, dim)``, or ``(n, dim), (g,) -> (n, dim)`` with times
    shared by groups of ``n / g`` consecutive rows (see the module docstring)."""

    def __init__(self, config: VelocityConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.input = nn.Linear(config.dim, w)
        self.time = TimeEmbedding(w, config.frequency_dim)
        self.blocks = nn.ModuleList(AdaLNBlock(w) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.output = nn.Linear(w, config.dim)
        for layer in (self.final_modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[-1] != self.config.dim:
            raise ValueError(f"expected x of shape (n, {self.config.dim}), got {tuple(x.shape)}")
        n, g = x.shape[0], t.shape[0] if t.ndim == 1 else 0
        if t.ndim != 1 or g == 0 or n % g:
            raise ValueError(f"expected t of shape ({n},), or (g,) with g dividing {n}; got {tuple(t.shape)}")
        c = self.time(t)  # (g, width)
        h = self.input(x).view(g, n // g, -1)  # (n, width) -> (g, k, width): rows grouped by their t
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).unsqueeze(1).chunk(2, dim=-1)  # 2 x (g, 1, width)
        return self.output(self.final_norm(h) * (1 + scale) + shift).view(n, -1)  # (g, k, dim) -> (n, dim)
