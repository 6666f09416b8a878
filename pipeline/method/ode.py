"""ODE integration of a velocity field: sampling and the change of variables.

Fixed-step solvers (``euler``, ``midpoint``, ``rk4``) take ``steps`` uniform steps; ``dopri5``
is adaptive (torchdiffeq, ``rtol``/``atol``). Everything is differentiable by backpropagation
through the solver's operations (no adjoint), so gradients w.r.t. inputs are exact for the
discretised solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchdiffeq import odeint

from pipeline.errors import SpecError

SOLVERS = ("euler", "midpoint", "rk4", "dopri5")


@dataclass(frozen=True)
class Solver:
    """How to integrate: ``method`` in ``SOLVERS``; ``steps`` for fixed-step methods."""

    method: str = "dopri5"
    steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self) -> None:
        if self.method not in SOLVERS:
            raise SpecError(f"unknown solver {self.method!r}; choose one of {', '.join(SOLVERS)}")
        if self.steps < 1:
            raise SpecError(f"solver steps must be >= 1, got {self.steps}")

    def integrate(self, f: Callable, state, t_start: float, t_end: float):
        """Solve ``d state / dt = f(t, state)`` from ``t_start`` to ``t_end``; return the end state."""
        leaf = state[0] if isinstance(state, tuple) else state
        times = torch.tensor([t_start, t_end], dtype=leaf.dtype, device=leaf.device)
        if self.method == "dopri5":
            out = odeint(f, state, times, method="dopri5", rtol=self.rtol, atol=self.atol)
        else:
            step = abs(t_end - t_start) / self.steps
            out = odeint(f, state, times, method=self.method, options={"step_size": step})
        return tuple(o[-1] for o in out) if isinstance(state, tuple) else out[-1]
