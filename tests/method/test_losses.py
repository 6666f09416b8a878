import pytest
import torch

from pipeline.method.losses import alignment_loss, flow_matching_loss
from pipeline.method.paths import interpolate, target_velocity
from tests.support.oracles import seeded


def test_path_endpoints_and_velocity():
    x_0, x_1 = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(interpolate(x_0, x_1, torch.zeros(5)), x_0)  # t = 0 is noise
    assert torch.allclose(interpolate(x_0, x_1, torch.ones(5)), x_1)  # t = 1 is data
    t = torch.full((5,), 0.3)
    h = 1e-3
    finite_diff = (interpolate(x_0, x_1, t + h) - interpolate(x_0, x_1, t - h)) / (2 * h)
    assert torch.allclose(finite_diff, target_velocity(x_0, x_1), atol=1e-3)


def test_fm_loss_of_exact_velocity_is_the_closed_form_minimum(gaussian_flow):
    n = 400_000
    x_1 = gaussian_flow.mu + gaussian_flow.s * torch.randn((n, 3), generator=seeded(1), dtype=torch.float64)
    loss = flow_matching_loss(gaussian_flow, x_1, generator=seeded(2))
    assert loss.shape == (n,)
    assert loss.mean().item() == pytest.approx(gaussian_flow.min_fm_loss(), rel=0.01)
    # Any other field does worse: v = 0 scores E|x_1 - x_0|^2 = |mu|^2 + d (s^2 + 1).
    zero = flow_matching_loss(lambda x, t: torch.zeros_like(x), x_1, generator=seeded(2)).mean().item()
    expected = gaussian_flow.mu.pow(2).sum().item() + 3 * (gaussian_flow.s**2 + 1)
    assert zero == pytest.approx(expected, rel=0.01)
    assert zero > gaussian_flow.min_fm_loss()


def test_stratified_shared_times_keep_the_fm_loss_unbiased(gaussian_flow):
    """t_group = k: n / k times, one in each of n / k equal strata of [0, 1], each shared by k samples;
    the mean loss of the exact field is still the closed-form minimum."""
    n, k = 400_000, 8
    x_1 = gaussian_flow.mu + gaussian_flow.s * torch.randn((n, 3), generator=seeded(1), dtype=torch.float64)
    seen = []

    def grouped(x, t):  # the exact field, called with one t per group of k rows
        seen.append(t)
        return gaussian_flow(x, t.repeat_interleave(len(x) // len(t)))

    loss = flow_matching_loss(grouped, x_1, generator=seeded(2), t_group=k)
    assert loss.shape == (n,)
    assert loss.mean().item() == pytest.approx(gaussian_flow.min_fm_loss(), rel=0.01)
    (t,) = seen
    g = n // k
    assert t.shape == (g,) and torch.equal(torch.floor(t * g), torch.arange(g, dtype=t.dtype))  # one per stratum
    with pytest.raises(ValueError, match="t_group must be a positive divisor of the batch size 10"):
        flow_matching_loss(grouped, x_1[:10], t_group=3)


def test_alignment_loss_of_exact_velocity_matches_closed_form(gaussian_flow):
    a, b = gaussian_flow.align_a, gaussian_flow.align_b
    mu = gaussian_flow.mu
    ys = torch.stack([mu, mu + 0.5, mu - torch.tensor([1.0, 0, 2.0], dtype=torch.float64)])
    loss = alignment_loss(gaussian_flow, ys, draws=200_000, generator=seeded(3))
    expected = a * (ys - gaussian_flow.mu).pow(2).sum(-1) + 3 * b
    assert loss.shape == (3,)
    assert torch.allclose(loss, expected, rtol=0.02)
    assert loss.argmin().item() == 0  # mode seeking: the minimum is at the mean


def test_alignment_loss_gradient_matches_finite_differences(gaussian_flow):
    y = torch.tensor([[0.1, -0.3, 1.5], [1.0, 0.0, 2.2]], dtype=torch.float64, requires_grad=True)
    loss = alignment_loss(gaussian_flow, y, draws=8, generator=seeded(5)).sum()
    (grad,) = torch.autograd.grad(loss, y)
    h = 1e-6
    numeric = torch.zeros_like(y)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            e = torch.zeros_like(y)
            e[i, j] = h
            plus = alignment_loss(gaussian_flow, (y + e).detach(), draws=8, generator=seeded(5)).sum()
            minus = alignment_loss(gaussian_flow, (y - e).detach(), draws=8, generator=seeded(5)).sum()
            numeric[i, j] = (plus - minus) / (2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_alignment_loss_draws_are_independent_and_reduce_variance(gaussian_flow):
    y = gaussian_flow.mu.expand(2000, 3).clone()
    one = alignment_loss(gaussian_flow, y, draws=1, generator=seeded(0))
    many = alignment_loss(gaussian_flow, y, draws=16, generator=seeded(0))
    assert many.var() < one.var() / 8  # K independent draws: variance / K
    assert many.mean().item() == pytest.approx(one.mean().item(), rel=0.05)


def test_alignment_loss_rejects_bad_draws(gaussian_flow):
    with pytest.raises(ValueError, match="draws"):
        alignment_loss(gaussian_flow, torch.zeros(2, 3, dtype=torch.float64), draws=0)
