import pytest
import torch

from pipeline.method.configs import VelocityConfig
from pipeline.method.likelihood import log_likelihood
from pipeline.method.ode import Solver
from pipeline.method.sampling import sample
from pipeline.method.velocity import VelocityMLP
from tests.support.oracles import seeded

TIGHT = Solver(method="dopri5", rtol=1e-8, atol=1e-8)


def test_exact_likelihood_of_a_known_flow(gaussian_flow):
    y = gaussian_flow.mu + torch.randn((16, 3), generator=seeded(0), dtype=torch.float64)
    with torch.no_grad():
        got = log_likelihood(gaussian_flow, y, divergence="exact", solver=TIGHT)
    assert torch.allclose(got, gaussian_flow.log_density(y), atol=1e-5)


def test_hutchinson_is_unbiased_for_a_known_flow(gaussian_flow):
    y = torch.tensor([[0.0, -0.5, 2.5]], dtype=torch.float64).expand(4000, 3)
    with torch.no_grad():
        got = log_likelihood(gaussian_flow, y, divergence="hutchinson", solver=Solver("rk4", steps=40),
                             generator=seeded(1))
    # the field is linear in x, so eps^T J eps is exact per probe up to off-diagonals (zero here)
    assert got.mean().item() == pytest.approx(gaussian_flow.log_density(y[:1]).item(), abs=1e-3)


def test_hutchinson_averages_to_exact_on_a_network():
    torch.manual_seed(0)
    net = VelocityMLP(VelocityConfig(dim=4, width=32, depth=2)).double()
    for p in net.parameters():  # the zero-initialised output layer would make div v = 0
        torch.nn.init.normal_(p, std=0.3)
    y = torch.randn((1, 4), dtype=torch.float64).expand(3000, 4)
    solver = Solver("rk4", steps=10)
    with torch.no_grad():
        exact = log_likelihood(net, y[:1], divergence="exact", solver=solver)
        hutch = log_likelihood(net, y, divergence="hutchinson", solver=solver, generator=seeded(2))
    stderr = hutch.std().item() / 3000**0.5
    assert abs(hutch.mean().item() - exact.item()) < 4 * stderr + 1e-6


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_likelihood_gradient_wrt_inputs_matches_finite_differences(divergence):
    """The flow-matching package 1.0.10 detaches here; we must not."""
    torch.manual_seed(1)
    net = VelocityMLP(VelocityConfig(dim=3, width=16, depth=2)).double().requires_grad_(False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.4)
    solver = Solver("rk4", steps=12)

    def f(y: torch.Tensor) -> torch.Tensor:
        return log_likelihood(net, y, divergence=divergence, solver=solver, generator=seeded(7)).sum()

    y = torch.randn((2, 3), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(y), y)
    h, numeric = 1e-6, torch.zeros_like(y)
    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                e = torch.zeros_like(y)
                e[i, j] = h
                numeric[i, j] = (f(y + e) - f(y - e)) / (2 * h)
    assert grad.abs().max() > 1e-3  # a real signal, not 0 == 0
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_likelihood_gradient_reaches_parameters():
    net = VelocityMLP(VelocityConfig(dim=2, width=16, depth=1)).double()
    y = torch.randn((8, 2), dtype=torch.float64)
    log_likelihood(net, y, divergence="exact", solver=Solver("euler", steps=5)).mean().backward()
    assert net.output.weight.grad is not None and net.output.weight.grad.abs().sum() > 0


def test_unknown_divergence_and_solver_are_rejected(gaussian_flow):
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(gaussian_flow, torch.zeros(1, 3, dtype=torch.float64), divergence="magic")
    with pytest.raises(ValueError, match="solver"):
        Solver(method="leapfrog")


@pytest.mark.parametrize("solver", [Solver("euler", steps=200), Solver("dopri5")])
def test_sampling_a_known_flow_gives_the_target(gaussian_flow, solver):
    x_0 = torch.randn((20_000, 3), generator=seeded(4), dtype=torch.float64)
    x_1 = sample(gaussian_flow, x_0, solver)
    assert torch.allclose(x_1.mean(0), gaussian_flow.mu, atol=0.02)
    assert torch.allclose(x_1.std(0), torch.full((3,), gaussian_flow.s, dtype=torch.float64), atol=0.02)
