import math

import pytest
import torch

from pipeline.method.matching import CalibrationError, calibrate_beta, matching_loss
from pipeline.method.ode import Solver
from tests.conftest import GaussianFlow, seeded


@pytest.fixture
def flow2d() -> GaussianFlow:
    return GaussianFlow(torch.tensor([1.0, -0.5], dtype=torch.float64), s=0.5)


def test_calibrated_slope_is_the_closed_form(flow2d):
    # L_align = A |y - mu|^2 + B d and NLL = |y - mu|^2 / (2 s^2) + c, so the slope is 2 s^2 A.
    z = flow2d.mu + flow2d.s * torch.randn((3000, 2), generator=seeded(0), dtype=torch.float64)
    slope = calibrate_beta(flow2d, z, draws=64, solver=Solver("rk4", steps=50), generator=seeded(1), shrink=1.0)
    assert slope == pytest.approx(2 * flow2d.s**2 * flow2d.align_a, rel=0.03)
    half = calibrate_beta(flow2d, z, draws=64, solver=Solver("rk4", steps=50), generator=seeded(1))
    assert half == pytest.approx(slope / 2)


def test_matching_with_the_slope_recovers_the_target_width(flow2d):
    """E L_match = A (|m - mu|^2 + d sigma^2) + B d - beta d log sigma: optimum sigma^2 = beta / 2A = s^2."""
    beta = 2 * flow2d.s**2 * flow2d.align_a
    g = seeded(2)
    mean = torch.zeros((64, 2), dtype=torch.float64, requires_grad=True)
    log_std = torch.full((64, 2), math.log(0.1), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([mean, log_std], lr=0.03)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 600)
    for _ in range(600):
        loss = matching_loss(flow2d, mean, log_std, beta, draws=16, generator=g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    assert log_std.exp().mean().item() == pytest.approx(flow2d.s, rel=0.05)
    assert torch.allclose(mean.mean(0), flow2d.mu, atol=0.05)
    # without the entropy term the latent collapses (mode seeking)
    assert matching_loss(flow2d, mean, log_std - 2, 0.0, draws=64, generator=g).mean() < \
        matching_loss(flow2d, mean, log_std, 0.0, draws=64, generator=g).mean()


def test_matching_input_errors(flow2d):
    with pytest.raises(ValueError, match="must match"):
        matching_loss(flow2d, torch.zeros(3, 2), torch.zeros(3, 1), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        matching_loss(flow2d, torch.zeros(3, 2), torch.zeros(3, 2), beta=-1.0)


def test_calibration_without_a_likelihood_spread_is_refused(flow2d):
    z = flow2d.mu.expand(50, 2).clone()  # every point has the same NLL: no slope to measure
    with pytest.raises(CalibrationError, match="same likelihood"):
        calibrate_beta(flow2d, z, draws=4, solver=Solver("rk4", steps=10))
