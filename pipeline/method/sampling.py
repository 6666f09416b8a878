"""Sampling: integrate ``dx/dt = v(x, t)`` from noise ``x_0`` at ``t = 0`` to ``t = 1``."""

from __future__ import annotations

import torch

from pipeline.method.losses import Velocity
from pipeline.method.ode import Solver


def sample(velocity: Velocity, x_0: torch.Tensor, solver: Solver = Solver()) -> torch.Tensor:
    """Push noise ``x_0`` ``(n, d)`` through the flow to ``x_1`` ``(n, d)``."""
    n = x_0.shape[0]
    return solver.integrate(lambda t, x: velocity(x, t.expand(n)), x_0, 0.0, 1.0)
