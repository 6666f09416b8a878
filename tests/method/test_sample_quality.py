"""Frechet distance and k-NN precision/recall/coverage against closed forms and known cases."""

import math

import pytest
import torch

from pipeline.method.sample_quality import frechet_distance, precision_recall


def test_frechet_distance_is_the_closed_form_for_gaussians():
    """Independent Gaussian coordinates: FD = |mu_r - mu_g|^2 + sum_j (sigma_rj - sigma_gj)^2."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    sd_r, sd_g = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    mu_r, mu_g = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, 0.0])
    real = mu_r + sd_r * torch.randn(n, 3, generator=g)
    generated = mu_g + sd_g * torch.randn(n, 3, generator=g)
    expected = (mu_r - mu_g).pow(2).sum() + (sd_r - sd_g).pow(2).sum()  # 2 + 0.25 + 1 = 3.25
    assert frechet_distance(real, generated) == pytest.approx(expected.item(), abs=0.03)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_correlated_gaussians_matches_the_matrix_formula():
    """A full covariance against a rotated one: FD = Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), computed by scipy."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    real, generated = torch.randn(100_000, 4, generator=g, dtype=torch.float64) @ a, \
        torch.randn(100_000, 4, generator=g, dtype=torch.float64) @ b + 0.5
    s1, s2 = torch.cov(real.T).numpy(), torch.cov(generated.T).numpy()
    cross = scipy_linalg.sqrtm(s1 @ s2).real
    expected = float(((real.mean(0) - generated.mean(0)) ** 2).sum()) + float((s1 + s2 - 2 * cross).trace())
    assert frechet_distance(real, generated) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_refuses_mismatched_sets():
    with pytest.raises(ValueError, match="one dimension"):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))


def test_precision_recall_and_coverage_see_dropped_modes_and_implausible_samples():
    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    real = modes[torch.arange(2000) % 2] + 0.5 * torch.randn(2000, 2, generator=g)
    same = modes[torch.arange(2000) % 2] + 0.5 * torch.randn(2000, 2, generator=g)
    full = precision_recall(real, same)
    assert full["precision"] > 0.95 and full["recall"] > 0.95  # a second sample of the same law
    assert full["coverage"] == pytest.approx(1 - 2**-3, abs=0.02)  # Naeem et al.: 1 - (1/2)^k for equal laws, n = m
    one_mode = precision_recall(real, modes[0] + 0.5 * torch.randn(2000, 2, generator=g))
    assert one_mode["precision"] > 0.9 and one_mode["recall"] == pytest.approx(0.5, abs=0.06)
    assert one_mode["coverage"] == pytest.approx(0.5, abs=0.06)  # half the real points have no sample near
    far = precision_recall(real, torch.tensor([0.0, 40.0]) + torch.randn(2000, 2, generator=g))
    assert far == {"precision": 0.0, "recall": 0.0, "coverage": 0.0}
    assert math.isclose(precision_recall(real, real)["precision"], 1.0)
