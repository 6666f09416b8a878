import math

import pytest
import torch

from pipeline.toy.targets import TARGETS, get_target
from tests.support.oracles import seeded

TICKS = torch.linspace(-6, 6, 121, dtype=torch.float64)  # spacing 0.1 <= every target's std
CELL = (TICKS[1] - TICKS[0]).item() ** 2


@pytest.fixture(scope="module")
def grid_log_prob() -> dict[str, torch.Tensor]:
    grid = torch.cartesian_prod(TICKS, TICKS)
    return {name: target.log_prob(grid) for name, target in TARGETS.items()}


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.slow
def test_density_integrates_to_one(name, grid_log_prob):
    # a Riemann sum on a lattice finer than the noise std is accurate for these smooth densities
    assert grid_log_prob[name].exp().sum().item() * CELL == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.slow
def test_samples_follow_the_density(name, grid_log_prob):
    """Samples score the density's own expected log-likelihood (a histogram-free check)."""
    target = TARGETS[name]
    x = target.sample(10_000, seeded(0))
    assert x.shape == (10_000, 2) and x.dtype == torch.float32
    log_p = grid_log_prob[name]
    on_grid = (log_p.exp() * log_p).sum().item() * CELL  # E_p[log p] by quadrature
    on_samples = target.log_prob(x.double())
    stderr = on_samples.std().item() / len(x) ** 0.5
    assert abs(on_samples.mean().item() - on_grid) < 4 * stderr + 0.01


@pytest.mark.parametrize("name", ["moons", "rings", "spiral", "swissroll"])
def test_curve_quadrature_matches_monte_carlo(name):
    """p(x) = E_s N(x; c(s), std^2 I), estimated with 400k random s, agrees with the quadrature."""
    target = TARGETS[name]
    points = target.sample(5, seeded(1)).double()
    centres = target.curve(torch.rand(400_000, generator=seeded(2), dtype=torch.float64))
    kernel = torch.exp(-torch.cdist(points, centres).pow(2) / (2 * target.std**2)) / (2 * math.pi * target.std**2)
    monte_carlo = kernel.mean(1)
    relative_stderr = kernel.std(1) / kernel.shape[1] ** 0.5 / monte_carlo  # stderr of log p
    error = (target.log_prob(points) - monte_carlo.log()).abs()
    assert (error < 4 * relative_stderr + 1e-3).all(), (error, relative_stderr)


def test_mixture_density_is_the_closed_form():
    mog = TARGETS["mog"]
    assert mog.modes.shape == (5, 2)
    assert torch.allclose(mog.modes.norm(dim=1), torch.full((5,), 3.0, dtype=torch.float64))
    # at a mode centre the other components are >= 3.5 away (negligible at std 0.3)
    expected = math.log(0.2) - math.log(2 * math.pi * 0.09)
    assert mog.log_prob(mog.modes[:1]).item() == pytest.approx(expected, abs=1e-6)
    assert TARGETS["grid"].modes.shape == (16, 2) and TARGETS["moons"].modes is None


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown distribution 'gauss'; choose one of mog, grid"):
        get_target("gauss")

