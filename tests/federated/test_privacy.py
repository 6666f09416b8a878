"""The Gaussian mechanism on a site's moments: its noise scales (a closed form), the noise it draws (their law),
and exact sums giving back exact moments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import SpecError
from pipeline.federated.privacy import clip_rows, gaussian_sigma, moments_from_sums, private_sums, sigmas
from pipeline.federated.spec import Privacy
from pipeline.method.moments import Moments


def test_sigma_is_the_gaussian_mechanism_with_the_budget_split_three_ways():
    privacy = Privacy(epsilon=0.9, delta=3e-6, clip=2.0)
    scale = math.sqrt(2 * math.log(1.25 / 1e-6)) / 0.3  # each release: epsilon / 3, delta / 3
    assert sigmas(privacy) == pytest.approx({"n": scale, "s": 2.0 * scale, "S": 4.0 * scale})
    assert gaussian_sigma(1.0, 0.5, 1e-5) == pytest.approx(2 * gaussian_sigma(1.0, 1.0, 1e-5))


def test_the_noise_has_the_stated_spread_and_is_symmetric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    privacy = Privacy(epsilon=1.0, clip=100.0)  # no row is clipped: the exact sums are those of x
    draws = [private_sums(x, privacy, rng) for _ in range(4000)]
    sigma = sigmas(privacy)
    n_noise = np.array([d[0] for d in draws]) - len(x)
    s_noise = np.stack([d[1] for d in draws]) - x.sum(0)
    big_noise = np.stack([d[2] for d in draws]) - x.T @ x  # (draws, 3, 3)
    assert np.std(n_noise) == pytest.approx(sigma["n"], rel=0.05)
    assert np.std(s_noise, axis=0) == pytest.approx([sigma["s"]] * 3, rel=0.05)
    assert np.allclose(big_noise, np.swapaxes(big_noise, 1, 2))  # S stays symmetric
    assert np.std(big_noise[:, 0, 1]) == pytest.approx(sigma["S"], rel=0.05)
    assert np.std(big_noise[:, 2, 2]) == pytest.approx(sigma["S"], rel=0.05)
    assert abs(np.mean(s_noise)) < 4 * sigma["s"] / math.sqrt(len(draws))  # unbiased


def test_exact_sums_give_the_exact_moments_and_noisy_ones_a_covariance():
    x = np.random.default_rng(1).normal(size=(200, 4)) * [1, 2, 3, 4] + 5
    exact = Moments.of(x)
    back = moments_from_sums(len(x), x.sum(0), x.T @ x)
    assert back.n == exact.n and np.allclose(back.mean, exact.mean) and np.allclose(back.m2, exact.m2)
    noisy = moments_from_sums(len(x), x.sum(0), x.T @ x - 1e6 * np.eye(4))  # noise that breaks positivity
    assert np.linalg.eigvalsh(noisy.m2).min() >= -1e-6


def test_rows_are_clipped_to_the_stated_norm():
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = clip_rows(x, 1.0)
    assert np.allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"epsilon": 1.5}, {"epsilon": 0.5, "delta": 1.0},
                                    {"epsilon": 0.5, "clip": 0.0}])
def test_budgets_outside_the_mechanism_are_refused(kwargs):
    with pytest.raises(SpecError):
        Privacy(**kwargs)


def test_a_sites_noise_cannot_be_drawn_again_from_anything_it_sent():
    """The noise comes from the OS's entropy, not from a seed the server knows (the run's seed, the row count):
    the same rows released twice carry different noise."""
    from pipeline.federated.site import SiteRows

    rows = SiteRows.of("s", np.random.default_rng(0).normal(size=(100, 2)), 0.2)
    first, second = rows.moments(Privacy(epsilon=1.0)), rows.moments(Privacy(epsilon=1.0))
    assert not np.allclose(first.mean, second.mean)
    assert np.allclose(rows.moments().mean, rows.train.mean(0))
