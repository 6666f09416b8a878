"""The straight (rectified-flow) probability path; the one place the time convention lives.

``t = 1`` is data, ``x_0 ~ N(0, I)`` is noise and ``x_1`` is data:

    x_t = (1 - t) x_0 + t x_1,        u_t(x_t | x_0, x_1) = d x_t / dt = x_1 - x_0.

Sampling integrates ``dx/dt = v(x, t)`` from ``t = 0`` (noise) to ``t = 1`` (data).
"""

from __future__ import annotations

import torch


def interpolate(x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x_0 + t x_1``; ``t`` has shape ``x_0.shape[:-1]`` and broadcasts over dims."""
    t = t.unsqueeze(-1)  # (..., 1)
    return (1.0 - t) * x_0 + t * x_1


def target_velocity(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    """The conditional velocity of the straight path, ``u = x_1 - x_0`` (constant in t)."""
    return x_1 - x_0
