"""Sufficient statistics of a point cloud, computed block by block and combined exactly.

    m = Moments.of(x_a).merge(Moments.of(x_b))    # == Moments.of(concat(x_a, x_b)) up to rounding

``n`` points, their ``mean`` ``(d,)`` and ``m2 = sum_i (x_i - mean)(x_i - mean)^T`` ``(d, d)``, in
float64. Two blocks combine with Chan et al.'s pairwise update (no cancellation from raw sums):

    n = n_a + n_b,   delta = mean_b - mean_a,   mean = mean_a + delta n_b / n,
    m2 = m2_a + m2_b + delta delta^T n_a n_b / n

so the map to prior space (mean, covariance, PCA axes, scales) can be fitted on a fleet's features
streamed through many tasks, holding only ``d^2`` numbers per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    n: int
    mean: np.ndarray  # (d,) float64
    m2: np.ndarray  # (d, d) float64: sum of centred outer products

    @classmethod
    def of(cls, x) -> "Moments":
        """Moments of the rows of ``x`` ``(n, d)`` (numpy or torch)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
        centred = x - mean  # (n, d)
        return cls(len(x), mean, centred.T @ centred)

    @classmethod
    def empty(cls, d: int) -> "Moments":
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @property
    def dim(self) -> int:
        return len(self.mean)

    def merge(self, other: "Moments") -> "Moments":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n,
                       self.m2 + other.m2 + np.outer(delta, delta) * self.n * other.n / n)

    @property
    def covariance(self) -> np.ndarray:
        """``(d, d)`` population covariance ``m2 / n``."""
        if self.n == 0:
            raise ValueError("no points: the covariance is undefined")
        return self.m2 / self.n

    def project(self, p: np.ndarray) -> "Moments":
        """Moments of ``x P^T`` for a ``(d1, d)`` matrix ``P``: ``(P mean, P m2 P^T)``."""
        p = np.asarray(p, dtype=np.float64)
        return Moments(self.n, p @ self.mean, p @ self.m2 @ p.T)
