"""The six 2-D targets of the paper's toy experiment, each with an exact log-density.

Every target is ``x = c + sigma * noise`` with ``c`` drawn from a base measure: finitely
many centres (``mog``, ``grid``: Gaussian mixtures, log-density in closed form) or a curve
``c(s)``, ``s ~ U[0, 1]`` (``moons``, ``rings``, ``spiral``, ``swissroll``), whose density
``p(x) = int_0^1 N(x; c(s), sigma^2 I) ds`` is computed by the midpoint rule on ``quadrature``
nodes. That is a mixture of ``quadrature`` Gaussians whose spacing is far below ``sigma``, so
it is exact to plotting precision and needs no bandwidth (a KDE of samples, as in the paper,
would blur the density by its bandwidth); the tests check it against a Monte Carlo estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.errors import SpecError


def _mixture_log_prob(x: torch.Tensor, centres: torch.Tensor, log_weights: torch.Tensor, std: float) -> torch.Tensor:
    """``log sum_m w_m N(x; c_m, std^2 I)``: ``(n, 2) -> (n,)``, chunked over points."""
    d = x.shape[1]
    out = []
    for chunk in x.split(4096):
        sq = torch.cdist(chunk.double(), centres.double()).pow(2)  # (n, M)
        out.append(torch.logsumexp(log_weights.double() - sq / (2 * std**2), dim=1))
    return torch.cat(out) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


@dataclass(frozen=True)
class Target:
    """A 2-D target: ``x = c + std * N(0, I)``, ``c`` from ``centres`` (with weights) or a ``curve``."""

    name: str
    std: float
    centres: torch.Tensor | None = None  # (M, 2) for mixtures; also their modes
    curve: Callable[[torch.Tensor], torch.Tensor] | None = None  # s (n,) in [0, 1] -> (n, 2)
    quadrature: int = 8192

    @property
    def modes(self) -> torch.Tensor | None:
        """Mode centres of a mixture (for coverage and within-mode spread); ``None`` for curves."""
        return self.centres

    def _base_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres and log-weights of the (exact or quadrature) mixture."""
        if self.centres is not None:
            m = len(self.centres)
            return self.centres.double(), torch.full((m,), -math.log(m), dtype=torch.float64)
        s = (torch.arange(self.quadrature, dtype=torch.float64) + 0.5) / self.quadrature
        return self.curve(s), torch.full((self.quadrature,), -math.log(self.quadrature), dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``(n, 2)``, float32."""
        if self.centres is not None:
            c = self.centres[torch.randint(0, len(self.centres), (n,), generator=generator)]
        else:
            c = self.curve(torch.rand(n, generator=generator, dtype=torch.float64))
        noise = torch.randn((n, 2), generator=generator, dtype=torch.float64)
        return (c.double() + self.std * noise).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density ``(n,)`` (float64) of points ``x`` ``(n, 2)``."""
        centres, log_weights = self._base_points()
        return _mixture_log_prob(x, centres, log_weights, self.std)


def _circle(radius: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)


def _moons(s: torch.Tensor) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), centred at the origin."""
    upper = s < 0.5
    theta = torch.where(upper, 2 * s, 2 * s - 1) * math.pi  # [0, pi) on each moon
    top = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    bottom = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], -1)
    return torch.where(upper[:, None], top, bottom) - torch.tensor([0.5, 0.25], dtype=s.dtype)


RING_RADII = (1.0, 2.0, 3.0)


def _rings(s: torch.Tensor) -> torch.Tensor:
    """Concentric circles, uniform over total arc length (ring mass proportional to its radius)."""
    radii = torch.tensor(RING_RADII, dtype=s.dtype)
    edges = torch.cumsum(radii, 0) / radii.sum()  # upper s-edge of each ring
    ring = torch.bucketize(s, edges, right=True).clamp_max(len(radii) - 1)
    lower = torch.cat([torch.zeros(1, dtype=s.dtype), edges[:-1]])[ring]
    fraction = (s - lower) / (edges[ring] - lower)
    return _circle(radii[ring], 2 * math.pi * fraction)


def _spiral(s: torch.Tensor) -> torch.Tensor:
    """Two interleaved arms of an Archimedean spiral, r = 0.3 + 2.7 u, angle 3 pi u (+ pi for arm 2)."""
    second = s >= 0.5
    u = torch.where(second, 2 * s - 1, 2 * s)
    angle = 3 * math.pi * u + math.pi * second.to(s.dtype)
    return _circle(0.3 + 2.7 * u, angle)


def _swissroll(s: torch.Tensor) -> torch.Tensor:
    """scikit-learn's 2-D swiss roll: t = 1.5 pi (1 + 2 s), (t cos t, t sin t) / 4."""
    t = 1.5 * math.pi * (1 + 2 * s)
    return _circle(t, t) / 4.0


def _mog_centres() -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(5, dtype=torch.float64) / 5
    return _circle(torch.full_like(angles, 3.0), angles)


def _grid_centres() -> torch.Tensor:
    ticks = torch.tensor([-3.0, -1.0, 1.0, 3.0], dtype=torch.float64)
    return torch.cartesian_prod(ticks, ticks)


TARGETS: dict[str, Target] = {
    "mog": Target("mog", std=0.3, centres=_mog_centres()),
    "grid": Target("grid", std=0.25, centres=_grid_centres()),
    "moons": Target("moons", std=0.1, curve=_moons),
    "rings": Target("rings", std=0.1, curve=_rings),
    "spiral": Target("spiral", std=0.1, curve=_spiral),
    "swissroll": Target("swissroll", std=0.15, curve=_swissroll),
}


def get_target(name: str) -> Target:
    """The target called ``name``, or a ``ValueError`` listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise SpecError(f"unknown distribution {name!r}; choose one of {', '.join(TARGETS)}") from None
