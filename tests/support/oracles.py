"""Shared oracles: the exact velocity field of a Gaussian target and its closed forms.

For ``x_1 ~ N(mu, s^2 I)``, ``x_0 ~ N(0, I)`` and ``x_t = (1 - t) x_0 + t x_1``:

    sigma_t^2 = (1 - t)^2 + t^2 s^2
    v*(x, t)  = E[x_1 - x_0 | x_t = x] = mu + c_t (x - t mu),  c_t = (t s^2 - (1 - t)) / sigma_t^2
    Var(x_1 - x_0 | x_t) = s^2 / sigma_t^2 per dimension, so  min L_FM = d int_0^1 s^2 / sigma_t^2 dt = d pi s / 2
    L_align(y) = A |y - mu|^2 + B d,  A = int (1 - t)^2 / sigma_t^4 dt,  B = int t^2 s^4 / sigma_t^4 dt
"""

from __future__ import annotations

import math

import torch
from scipy.integrate import quad


class GaussianFlow:
    """The exact (optimal) velocity field that transports N(0, I) to N(mu, s^2 I)."""

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        self.mu, self.s = mu, s

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).repeat_interleave(len(x) // len(t))[:, None]  # one t per row, or per group
        var_t = (1 - t) ** 2 + t**2 * self.s**2
        c_t = (t * self.s**2 - (1 - t)) / var_t
        mu = self.mu.to(x.dtype)
        return mu + c_t * (x - t * mu)

    def _sigma4(self, t: float) -> float:
        return ((1 - t) ** 2 + t**2 * self.s**2) ** 2

    @property
    def align_a(self) -> float:
        return quad(lambda t: (1 - t) ** 2 / self._sigma4(t), 0, 1)[0]

    @property
    def align_b(self) -> float:
        return quad(lambda t: t**2 * self.s**4 / self._sigma4(t), 0, 1)[0]

    def min_fm_loss(self) -> float:
        return len(self.mu) * math.pi * self.s / 2

    def log_density(self, y: torch.Tensor) -> torch.Tensor:
        d = y.shape[1]
        return (-0.5 * ((y - self.mu.to(y.dtype)) / self.s).pow(2).sum(-1)
                - d * math.log(self.s) - 0.5 * d * math.log(2 * math.pi))


class MixtureFlow:
    """The exact velocity field of a mixture ``sum_k w_k N(mu_k, s_k^2 I)``: per component, ``x_t`` given
    component ``k`` is ``N(t mu_k, sigma_k,t^2 I)``, so with responsibilities ``r_k(x, t)`` of those,

        v*(x, t) = sum_k r_k(x, t) (mu_k + c_k,t (x - t mu_k))     (c_k,t as for one Gaussian).

    ``t`` may be one time per row ``(n,)`` or per group of rows ``(g,)``, as ``VelocityMLP`` takes it."""

    def __init__(self, weights: list[float], means: torch.Tensor, stds: list[float]) -> None:
        self.log_w = torch.tensor(weights, dtype=torch.float64).log()  # (k,)
        self.mu, self.s = means.double(), torch.tensor(stds, dtype=torch.float64)  # (k, d), (k,)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        t = t.double().repeat_interleave(n // len(t))[:, None, None]  # (n, 1, 1)
        x = x.double()[:, None, :]  # (n, 1, d)
        var = (1 - t) ** 2 + t**2 * self.s[None, :, None] ** 2  # (n, k, 1)
        offset = x - t * self.mu[None]  # (n, k, d)
        log_r = self.log_w[None] - 0.5 * (offset.pow(2) / var).sum(-1) - 0.5 * d * var[..., 0].log()  # (n, k)
        c = (t * self.s[None, :, None] ** 2 - (1 - t)) / var
        per_component = self.mu[None] + c * offset  # (n, k, d)
        return (log_r.softmax(-1)[..., None] * per_component).sum(1)  # (n, d)


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
