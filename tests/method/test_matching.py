"""Oracles for distribution matching: exact velocity fields of Gaussians and of a two-mode mixture."""

import pytest
import torch

from pipeline.method.configs import MatchConfig, VelocityConfig
from pipeline.method.matching import AuxiliaryFlow, matching_loss, velocity_difference
from pipeline.method.velocity import VelocityMLP
from tests.support.oracles import GaussianFlow, MixtureFlow, seeded

PRIOR = GaussianFlow(torch.tensor([1.0, -0.5], dtype=torch.float64), s=0.5)


def _descend_with_exact_fields(y: torch.Tensor, steps: int, lr: float = 0.5) -> torch.Tensor:
    """Particles ``y`` move along ``-g``, ``v_q`` the exact field of the Gaussian fitted to them each step."""
    g = seeded(1)
    for step in range(steps):
        q = GaussianFlow(y.mean(0), y.std(0).mean().item())
        rate = lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps))).item()  # cosine to 0
        y = y - rate * velocity_difference(PRIOR, q, y, draws=8, generator=g)
    return y


@pytest.mark.parametrize("start_mean, start_std", [(0.0, 1.5), (-1.0, 0.05)], ids=["wide", "collapsed"])
def test_gaussian_fixed_point_is_the_target(start_mean, start_std):
    """With exact fields the only fixed point is q = p: a wide cloud shrinks, and a collapsed one
    (what mode-seeking L_align leaves) widens, to N(mu, s^2)."""
    y = start_mean + start_std * torch.randn((4000, 2), generator=seeded(0), dtype=torch.float64)
    y = _descend_with_exact_fields(y, steps=300)
    assert torch.allclose(y.mean(0), PRIOR.mu, atol=0.03)
    assert y.std(0) == pytest.approx([PRIOR.s, PRIOR.s], rel=0.05)


def test_at_the_target_the_direction_vanishes():
    y = PRIOR.mu + PRIOR.s * torch.randn((2000, 2), generator=seeded(2), dtype=torch.float64)
    g = velocity_difference(PRIOR, GaussianFlow(PRIOR.mu, PRIOR.s), y, draws=4, generator=seeded(3))
    assert g.abs().max().item() < 1e-12
    off = velocity_difference(PRIOR, GaussianFlow(PRIOR.mu + 1.0, PRIOR.s), y, draws=4, generator=seeded(3))
    assert (off.mean(0) > 0.1).all()  # q to the right of p: descending -g moves the latents left


def test_matching_loss_gradient_is_the_velocity_difference():
    y = torch.randn((64, 2), generator=seeded(4), dtype=torch.float64, requires_grad=True)
    q = GaussianFlow(torch.zeros(2, dtype=torch.float64), 1.0)
    matching_loss(PRIOR, q, y, draws=4, generator=seeded(5)).sum().backward()
    assert torch.allclose(y.grad, velocity_difference(PRIOR, q, y.detach(), draws=4, generator=seeded(5)))


@pytest.mark.slow
def test_online_auxiliary_flow_matches_two_mode_shares():
    """A 70/30 two-mode target: latents driven by a *learned* auxiliary flow end up in the modes in the
    target's proportions, with the modes' width (plain L_align would pile them on the modes' centres)."""
    prior = MixtureFlow([0.7, 0.3], torch.tensor([[-1.5], [1.5]]), [0.4, 0.4])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = VelocityMLP(VelocityConfig(dim=1, width=64, depth=2))
    aux = AuxiliaryFlow(start, MatchConfig(aux_steps=2, aux_lr=3e-3))
    g = seeded(6)
    y = torch.randn((1000, 1), generator=g).requires_grad_(True)
    for _ in range(150):  # the auxiliary flow first learns the starting latents
        aux.fit(y, generator=g)
    optimiser = torch.optim.Adam([y], lr=0.03)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 600)
    for _ in range(600):
        aux.fit(y, generator=g)
        loss = matching_loss(prior, aux.velocity, y, draws=4, generator=g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    y = y.detach()[:, 0]
    left = y < 0
    assert left.float().mean().item() == pytest.approx(0.7, abs=0.05)
    assert y[left].mean().item() == pytest.approx(-1.5, abs=0.15)
    assert y[~left].mean().item() == pytest.approx(1.5, abs=0.15)
    assert y[left].std().item() == pytest.approx(0.4, rel=0.25)


def test_auxiliary_flow_state_round_trips():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = VelocityMLP(VelocityConfig(dim=2, width=16, depth=1))
    one = AuxiliaryFlow(start)
    y = torch.randn((32, 2), generator=seeded(7))
    one.fit(y, generator=seeded(8))
    two = AuxiliaryFlow(start)
    tensors, groups = one.tensors()
    two.load_tensors({k: v.clone() for k, v in tensors.items()}, groups)  # as a checkpoint holds them: no aliasing
    one.fit(y, generator=seeded(9))
    two.fit(y, generator=seeded(9))
    for a, b in zip(one.velocity.parameters(), two.velocity.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(p.abs().sum() == 0 for p in start.output.parameters())  # the prior's weights are not trained


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="t_min"):
        MatchConfig(t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match="aux_steps"):
        MatchConfig(aux_steps=0)
    with pytest.raises(ValueError, match="draws"):
        velocity_difference(PRIOR, PRIOR, torch.zeros(3, 2), draws=0)
