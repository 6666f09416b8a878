"""Distribution matching: an option past the mode seeking of ``L_align``.

Minimising ``L_align(y)`` alone pulls every latent to a mode. Make the latent stochastic,
``y = mu + sigma * eps`` (``q = N(mu, diag sigma^2)``), and add its entropy:

    L_match(mu, sigma) = E_eps L_align(mu + sigma eps) - beta * sum_j log sigma_j
                       = E_q L_align - beta * H(q) + const.

If ``L_align(y) ~ a * NLL(y) + c`` where ``q`` puts its mass, this is
``a * E_q[NLL] - beta * H(q) = a * KL(q || p^{a / beta}) + const``: it is minimised by
``q ~ p^{a / beta}``, so ``beta = a`` matches the prior itself (``KL(q || p)``); smaller
``beta`` sharpens towards the modes, larger blurs. :func:`calibrate_beta` measures ``a`` on the
prior's own samples as the least-squares slope of ``L_align`` against the flow's exact
negative log-likelihood. For a Gaussian target both are quadratics in ``y`` and ``beta = a``
is exact (tested: the optimal ``sigma`` is the target's).

With a learned prior the slope sets each latent's ``sigma`` to the mode width (measured on
the toy mixture: 0.148 vs the true 0.142), but ``L_align`` of a learned prior has a flat
bottom around each mode, so the *means* keep the mode-seeking scatter of plain alignment
(~0.75 of the mode width) and the latents as a whole come out ~1.3x too wide. The aggregate
variance is ``scatter^2 + sigma^2``; to bring it to the mode width ``sigma^2`` must shrink by
``1 - 0.75^2 ~ 0.5``, so ``calibrate_beta`` returns ``shrink * a`` with ``shrink = 0.5`` by
default (``shrink=1`` gives the plain slope). The toy's ``metrics.json`` reports the result.
"""

from __future__ import annotations

import torch

from pipeline.method.likelihood import log_likelihood
from pipeline.method.losses import Velocity, alignment_loss
from pipeline.method.ode import Solver


class CalibrationError(ValueError):
    """The prior's ``L_align`` does not grow with its NLL on the reference points: no ``beta`` to measure."""


def matching_loss(
    velocity: Velocity,
    mean: torch.Tensor,
    log_std: torch.Tensor,
    beta: float,
    draws: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample ``L_align(mean + exp(log_std) eps) - beta * sum(log_std)``: ``(n, d) x 2 -> (n,)``.

    Each of the ``draws`` terms has its own ``(eps, t, x_0)``, so K draws cut the variance of
    the gradient w.r.t. ``mean`` as well as the alignment noise.
    """
    if mean.shape != log_std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and log_std {tuple(log_std.shape)} must match")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    n, d = mean.shape
    eps = torch.randn((n, draws, d), generator=generator, dtype=mean.dtype, device=mean.device)
    y = (mean[:, None] + log_std.exp()[:, None] * eps).reshape(n * draws, d)  # (n K, d) samples of q
    align = alignment_loss(velocity, y, draws=1, generator=generator).reshape(n, draws).mean(-1)
    return align - beta * log_std.sum(-1)


def calibrate_beta(
    velocity: Velocity,
    z: torch.Tensor,
    draws: int = 64,
    divergence: str = "auto",
    solver: Solver = Solver(),
    generator: torch.Generator | None = None,
    shrink: float = 0.5,
) -> float:
    """``shrink * a``, ``a`` the slope of ``L_align`` against ``-log p`` over reference points ``z``
    (samples of the prior).

    ``a = cov(L_align, NLL) / var(NLL)``; MC noise of ``L_align`` (``draws`` per point) does
    not bias a least-squares slope, since it sits in the response, not the regressor.
    """
    with torch.no_grad():
        loss = alignment_loss(velocity, z, draws=draws, generator=generator).double()
        nll = -log_likelihood(velocity, z, divergence=divergence, solver=solver, generator=generator).double()
    nll_c = nll - nll.mean()
    variance = nll_c.pow(2).mean()
    if variance <= 0:
        raise CalibrationError("reference points all have the same likelihood; cannot calibrate beta")
    slope = ((loss - loss.mean()) * nll_c).mean() / variance
    if slope <= 0:
        raise CalibrationError(f"L_align does not grow with the NLL on these points (slope {slope:.3g}); "
                         "the prior may be undertrained: pass beta explicitly")
    return shrink * slope.item()
