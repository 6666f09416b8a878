"""The two losses of the method: flow matching (stage 1) and alignment (stage 2).

With the path of :mod:`pipeline.method.paths` (``t = 1`` is data):

    L_FM(theta) = E_{t ~ U[0,1], x_0 ~ N(0,I), x_1 ~ data} || v_theta(x_t, t) - (x_1 - x_0) ||^2
    L_align(y)  = E_{t ~ U[0,1], x_0 ~ N(0,I)}           || v_theta(x_t, t) - (y   - x_0) ||^2,
                  x_t = (1 - t) x_0 + t y.

``|| . ||^2`` is the squared norm (a sum over dimensions, as in the paper's formula and its
likelihood bound); divide by ``d`` for a per-dimension mean squared error.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipeline.method.paths import interpolate, target_velocity

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x, t)``: ``(n, d), (n,) -> (n, d)``."""


def flow_matching_loss(
    velocity: Velocity, x_1: torch.Tensor, generator: torch.Generator | None = None, t_group: int = 1
) -> torch.Tensor:
    """Per-sample flow-matching loss ``|| v(x_t, t) - (x_1 - x_0) ||^2``: ``(n, d) -> (n,)``.

    One ``x_0`` draw per sample; average over the batch for the training loss. ``t_group = 1``: one
    ``t ~ U[0, 1]`` per sample. ``t_group = k > 1`` (``k`` divides ``n``): ``g = n / k`` stratified
    times ``t_j = (j + u_j) / g``, ``u_j ~ U[0, 1]``, each shared by ``k`` consecutive samples (pass
    rows in random order). Each stratum has probability ``1 / g`` and ``t_j`` is uniform on it, so
    ``(1/n) sum_i loss_i`` is still an unbiased estimate of ``L_FM``; the velocity is called with
    ``t`` of shape ``(g,)`` (:class:`~pipeline.method.velocity.VelocityMLP` computes its time
    conditioning once per group).
    """
    n = x_1.shape[0]
    if t_group < 1 or n % t_group:
        raise ValueError(f"t_group must be a positive divisor of the batch size {n}, got {t_group}")
    g = n // t_group
    u = torch.rand(g, generator=generator, dtype=x_1.dtype, device=x_1.device)
    t = u if t_group == 1 else (torch.arange(g, dtype=x_1.dtype, device=x_1.device) + u) / g  # (g,)
    x_0 = torch.randn(x_1.shape, generator=generator, dtype=x_1.dtype, device=x_1.device)
    x_t = interpolate(x_0, x_1, t.repeat_interleave(t_group))  # (n, d); rows i k .. (i+1) k - 1 share t[i]
    residual = velocity(x_t, t) - target_velocity(x_0, x_1)
    return residual.pow(2).sum(-1)


def alignment_loss(
    velocity: Velocity,
    y: torch.Tensor,
    draws: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample ``L_align(y)``, averaged over ``draws`` independent ``(t, x_0)``: ``(n, d) -> (n,)``.

    Differentiable w.r.t. ``y`` (the path's end point *and* the regression target depend on
    it). The prior is not changed here: freeze its parameters (``FlowPrior`` does) so the
    gradient reaches only ``y``. Weight it with ``lambda`` in the caller's loss.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    n, d = y.shape
    y_k = y.unsqueeze(1).expand(n, draws, d).reshape(n * draws, d)  # (n K, d), row i*K+k
    t = torch.rand(n * draws, generator=generator, dtype=y.dtype, device=y.device)
    x_0 = torch.randn((n * draws, d), generator=generator, dtype=y.dtype, device=y.device)
    residual = velocity(interpolate(x_0, y_k, t), t) - target_velocity(x_0, y_k)  # (n K, d)
    return residual.pow(2).sum(-1).reshape(n, draws).mean(-1)  # (n,)
