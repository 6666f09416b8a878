"""Differentially private moments: what a site may send instead of its exact :class:`Moments`.

A site's rows ``x_i`` (each clipped to L2 norm ``C``: ``x_i <- x_i min(1, C / |x_i|)``) have three sums,
released with Gaussian noise (the Gaussian mechanism, Dwork & Roth 2014, Thm A.1):

    n  = sum_i 1            sensitivity 1
    s  = sum_i x_i          sensitivity C    (L2)
    S  = sum_i x_i x_i^T    sensitivity C^2  (Frobenius; noise on the upper triangle, mirrored)

Adding or removing one row moves each by at most its sensitivity ``D``, so ``sum + N(0, sigma^2)`` with
``sigma = D sqrt(2 ln(1.25 / delta')) / epsilon'`` is ``(epsilon', delta')``-DP for ``epsilon' < 1``; the
three releases split ``(epsilon, delta)`` evenly (basic composition), so the site's moments are
``(epsilon, delta)``-DP with respect to any one of its rows. The server derives ``mean = s / n`` and
``m2 = S - n mean mean^T`` (projected onto the positive semidefinite matrices): post-processing, no
further privacy cost. The training rounds that follow are *not* covered (docs/fleet.md, threat model).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.federated.spec import Privacy
from pipeline.method.moments import Moments

RELEASES = 3  # n, s and S share the budget evenly


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """``sigma = sensitivity sqrt(2 ln(1.25 / delta)) / epsilon``: the Gaussian mechanism's noise scale."""
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def sigmas(privacy: Privacy) -> dict[str, float]:
    """The noise scale of each release (``n``, ``s``, ``S``) at ``privacy``'s budget, split three ways."""
    epsilon, delta = privacy.epsilon / RELEASES, privacy.delta / RELEASES
    return {name: gaussian_sigma(sensitivity, epsilon, delta)
            for name, sensitivity in (("n", 1.0), ("s", privacy.clip), ("S", privacy.clip ** 2))}


def clip_rows(x: np.ndarray, clip: float) -> np.ndarray:
    """Rows ``(n, d)`` scaled down to L2 norm at most ``clip`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    return x * np.minimum(1.0, clip / np.maximum(norms, 1e-300))


def private_sums(x: np.ndarray, privacy: Privacy, rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """``(n, s (d,), S (d, d))`` of the clipped rows of ``x`` with the Gaussian mechanism's noise."""
    x = clip_rows(x, privacy.clip)
    sigma, d = sigmas(privacy), x.shape[1]
    noise = np.triu(rng.normal(0.0, sigma["S"], (d, d)))  # (d, d): one draw per released entry
    return (len(x) + rng.normal(0.0, sigma["n"]), x.sum(0) + rng.normal(0.0, sigma["s"], d),
            x.T @ x + noise + np.triu(noise, 1).T)


def moments_from_sums(n: float, s: np.ndarray, big_s: np.ndarray) -> Moments:
    """:class:`Moments` from noisy sums: ``mean = s / n``, ``m2 = S - n mean mean^T`` made positive
    semidefinite (negative eigenvalues set to 0); ``n`` is rounded and kept at least 2."""
    count = max(2, int(round(n)))
    mean = s / count
    m2 = big_s - count * np.outer(mean, mean)
    values, vectors = np.linalg.eigh((m2 + m2.T) / 2)
    return Moments(count, mean, (vectors * np.clip(values, 0.0, None)) @ vectors.T)


def private_moments(x: np.ndarray, privacy: Privacy, rng: np.random.Generator) -> Moments:
    """A site's moments, ``(epsilon, delta)``-DP in any one row of ``x`` ``(n, d)`` (module docstring)."""
    return moments_from_sums(*private_sums(x, privacy, rng))
