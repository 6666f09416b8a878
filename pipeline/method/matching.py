"""Distribution matching: move latents so that their *distribution* ``q`` becomes the prior ``p``.

``L_align`` is mode seeking: each latent minimises its own loss, so all of them slide towards the
prior's modes. Here the latents move together, along the gradient of a divergence between
distributions, estimated with a second flow fitted online to the latents (DMD-style).

Noise both with the path of :mod:`pipeline.method.paths` (``t = 1`` is data): ``q_t`` and ``p_t`` are
the laws of ``x_t = (1 - t) x_0 + t y``, ``x_0 ~ N(0, I)``, ``y ~ q`` (or ``p``). For this path the
marginal velocity ``v(x, t) = E[x_1 - x_0 | x_t = x]`` and the score are tied: from
``x = (1 - t) E[x_0 | x] + t E[x_1 | x]`` we get ``E[x_0 | x] = x - t v`` and, as ``x_0`` is Gaussian,

    s(x, t) = grad log p_t(x) = -E[x_0 | x_t = x] / (1 - t) = (t v(x, t) - x) / (1 - t),
    so  s_q - s_p = t / (1 - t) (v_q - v_p).

Objective: ``D(q) = int w(t) KL(q_t || p_t) dt`` for any weight ``w > 0``. Gaussian smoothing is
injective, so ``D(q) = 0`` iff ``q = p``: there is nothing to calibrate. For a latent ``y`` (an
encoder output, or a free particle), with ``x_t`` reparametrised by ``y`` (``d x_t / d y = t I``) and
the score-function term ``E_q[grad_theta log q]`` vanishing,

    grad_y KL(q_t || p_t) = E_{x_0}[ t (s_q - s_p)(x_t, t) ] = E_{x_0}[ t^2 / (1 - t) (v_q - v_p)(x_t, t) ].

We take ``w(t) = (1 - t) / t^2`` on ``t ~ U[t_min, t_max]``, so each latent moves along

    g(y) = E_{t, x_0}[ v_q(x_t, t) - v_p(x_t, t) ]          (descend: y <- y - lr g(y)),

with ``v_p`` the frozen prior and ``v_q`` an :class:`AuxiliaryFlow`: a copy of the prior fine-tuned
by flow matching on the current (detached) latents, a few steps per update. Starting from the
prior's weights, the auxiliary flow's errors where ``q ~ p`` are the prior's own and cancel in
the difference, so the latents converge to what the prior *generates*, not to a blurred copy.
:func:`matching_loss` is the surrogate ``<y, stopgrad(g)>`` whose gradient w.r.t. ``y`` is ``g``; its
value means nothing (log ``L_align`` or a distance instead). The ends of ``[0, 1]`` are left out:
near ``t = 0`` both fields see only noise; near ``t = 1`` ``v_q - v_p`` is ``O(1 - t)`` while the
auxiliary flow's error is not.
"""

from __future__ import annotations

import copy

import torch

from pipeline.method.checkpoint import load_optimiser, optimiser_tensors
from pipeline.method.configs import MatchConfig
from pipeline.method.losses import Velocity, flow_matching_loss
from pipeline.method.paths import interpolate


class AuxiliaryFlow:
    """``v_q``: a trainable copy of the prior's velocity, fitted online to the latents by flow matching."""

    def __init__(self, prior_velocity: torch.nn.Module, config: MatchConfig = MatchConfig()) -> None:
        self.config = config
        self.velocity = copy.deepcopy(prior_velocity).train().requires_grad_(True)
        # the fused kernel: one pass per parameter, a third of the foreach step's time for a 6M-parameter prior
        self.optimiser = torch.optim.Adam(self.velocity.parameters(), lr=config.aux_lr, fused=True)

    def fit(self, y: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """``config.aux_steps`` flow-matching steps on the latents ``y`` (n, d) (detached)."""
        y = y.detach()
        for _ in range(self.config.aux_steps):
            loss = flow_matching_loss(self.velocity, y, generator=generator).mean()
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()

    def tensors(self) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Weights and Adam moments as flat tensors, and Adam's ``param_groups`` (for a checkpoint)."""
        adam, groups = optimiser_tensors(self.optimiser, "adam")
        return {**{f"velocity.{k}": v.detach().cpu().contiguous() for k, v in self.velocity.state_dict().items()},
                **adam}, groups

    def load_tensors(self, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
        """Restore what :meth:`tensors` returned."""
        prefix = "velocity."
        self.velocity.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        load_optimiser(self.optimiser, tensors, "adam", groups)


def velocity_difference(
    prior_velocity: Velocity,
    aux_velocity: Velocity,
    y: torch.Tensor,
    draws: int = 4,
    t_range: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``g(y) = E_{t, x_0}[v_q(x_t, t) - v_p(x_t, t)]`` over ``draws`` draws per latent: ``(n, d) -> (n, d)``.

    No gradient flows (it is the descent direction of ``D(q)`` for each latent, module docstring)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    n, d = y.shape
    lo, hi = t_range
    with torch.no_grad():
        # one stratified time per draw, shared by all latents: t_k = lo + (hi - lo)(k + u_k) / K, so each
        # latent still sees t ~ U[lo, hi] and the velocity networks embed K times, not n K
        u = torch.rand(draws, generator=generator, dtype=y.dtype, device=y.device)
        t = lo + (hi - lo) * (torch.arange(draws, dtype=y.dtype, device=y.device) + u) / draws  # (K,)
        y_k = y.detach().expand(draws, n, d).reshape(draws * n, d)  # (K n, d), row k*n+i: draw k of latent i
        x_0 = torch.randn((draws * n, d), generator=generator, dtype=y.dtype, device=y.device)
        x_t = interpolate(x_0, y_k, t.repeat_interleave(n))
        difference = aux_velocity(x_t, t) - prior_velocity(x_t, t)  # (K n, d)
    return difference.reshape(draws, n, d).mean(0)  # (n, d)


def matching_loss(
    prior_velocity: Velocity,
    aux_velocity: Velocity,
    y: torch.Tensor,
    draws: int = 4,
    t_range: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-latent surrogate ``<y, stopgrad(g(y))>`` ``(n,)``: its gradient w.r.t. ``y`` is ``g(y)``
    (:func:`velocity_difference`). Weight it with ``lambda`` in the caller's loss."""
    g = velocity_difference(prior_velocity, aux_velocity, y, draws, t_range, generator)
    return (y * g).sum(-1)
