"""Log-likelihood of a flow, for evaluation (never inside the alignment loss).

Continuous change of variables along the flow (``t = 1`` is data, ``p_0 = N(0, I)``):

    d/dt log p_t(x_t) = - div v(x_t, t)
    log p_1(y) = log p_0(x_0) - int_0^1 div v(x_t, t) dt,   x_1 = y, x_0 from solving back to t = 0.

The divergence is exact (``d`` backward passes; small ``d``) or Hutchinson's estimate
``eps^T (dv/dx) eps`` with one probe ``eps`` per sample held fixed along the solve (large ``d``).
When gradients are enabled the divergence keeps its graph (``create_graph=True``), so
``log p`` is differentiable w.r.t. ``y`` and the network's parameters; gradients are checked
against finite differences in the tests.
"""

from __future__ import annotations

import math

import torch

from pipeline.errors import SpecError
from pipeline.method.losses import Velocity
from pipeline.method.ode import Solver

DIVERGENCES = ("exact", "hutchinson", "auto")
EXACT_MAX_DIM = 16  # "auto" uses the exact divergence up to this dimension


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when it is part of a graph; otherwise a detached copy that tracks gradients."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def divergence_exact(
    velocity: Velocity, x: torch.Tensor, t: torch.Tensor, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v(x, t), div_x v(x, t))`` with the exact trace of the Jacobian: ``(n, d), (n,)``."""
    with torch.enable_grad():
        x = _leaf(x)
        v = velocity(x, t)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(x.shape[1]):
            (grad_i,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
            div = div + grad_i[:, i]
    return (v, div) if create_graph else (v.detach(), div.detach())


def divergence_hutchinson(
    velocity: Velocity, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, eps^T (dv/dx) eps)``: an unbiased estimate of the divergence for ``E[eps eps^T] = I``."""
    with torch.enable_grad():
        x = _leaf(x)
        v = velocity(x, t)
        (vjp,) = torch.autograd.grad((v * eps).sum(), x, create_graph=create_graph)  # eps^T J
        div = (vjp * eps).sum(-1)
    return (v, div) if create_graph else (v.detach(), div.detach())


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)``: ``(n, d) -> (n,)``."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def log_likelihood(
    velocity: Velocity,
    y: torch.Tensor,
    divergence: str = "auto",
    solver: Solver = Solver(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log p_1(y)`` under the flow: ``(n, d) -> (n,)``.

    ``divergence``: ``exact``, ``hutchinson`` (Rademacher probes drawn from ``generator``) or
    ``auto`` (exact for ``d <= 16``).
    """
    if divergence not in DIVERGENCES:
        raise SpecError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    n, d = y.shape
    if divergence == "auto":
        divergence = "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    create_graph = torch.is_grad_enabled()
    if divergence == "exact":
        def field(x, t):
            return divergence_exact(velocity, x, t, create_graph)
    else:
        eps = torch.randint(0, 2, (n, d), generator=generator, device=y.device).to(y.dtype) * 2 - 1
        def field(x, t):
            return divergence_hutchinson(velocity, x, t, eps, create_graph)

    def dynamics(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        v, div = field(state[0], t.expand(n))
        return v, div  # d/dt (x, a) with a(t) = int_1^t div v ds, so a(0) = -int_0^1 div v dt

    zero = torch.zeros(n, dtype=y.dtype, device=y.device)
    x_0, a_0 = solver.integrate(dynamics, (y, zero), 1.0, 0.0)
    return standard_normal_log_density(x_0) + a_0
