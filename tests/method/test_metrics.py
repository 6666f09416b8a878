import math

import pytest
import torch

from pipeline.method import metrics
from tests.support.oracles import seeded


def gaussian_nll(y: torch.Tensor) -> torch.Tensor:
    return 0.5 * y.pow(2).sum(-1) + 0.5 * y.shape[1] * math.log(2 * math.pi)


def test_knn_nll_estimates_the_true_nll_of_a_gaussian():
    target = torch.randn((50_000, 2), generator=seeded(0))
    y = torch.randn((2000, 2), generator=seeded(1))
    est = metrics.knn_nll(y, target, k=10)
    assert est.mean().item() == pytest.approx(gaussian_nll(y).mean().item(), abs=0.1)
    # and it orders points like the true NLL does
    near, far = torch.zeros(1, 2), torch.full((1, 2), 2.0)
    assert metrics.knn_nll(near, target) < metrics.knn_nll(far, target)
    with pytest.raises(ValueError, match="k must be"):
        metrics.knn_nll(y, target[:3], k=5)


def test_mmd_is_zero_for_equal_distributions_and_grows_with_a_shift():
    x = torch.randn((2000, 2), generator=seeded(0))
    same = metrics.mmd(torch.randn((2000, 2), generator=seeded(1)), x)
    shifted = metrics.mmd(torch.randn((2000, 2), generator=seeded(1)) + 0.5, x)
    collapsed = metrics.mmd(0.3 * torch.randn((2000, 2), generator=seeded(1)), x)
    assert abs(same) < 2e-3
    assert shifted > 20 * abs(same) and collapsed > 20 * abs(same)


def test_sliced_wasserstein_of_a_translation_has_a_closed_form():
    # W2 along direction theta is |theta . delta|; E (theta . delta)^2 = |delta|^2 / d
    x = torch.randn((5_000, 3), generator=seeded(0))
    delta = torch.tensor([1.0, -2.0, 0.5])
    sw = metrics.sliced_wasserstein(x + delta, x, projections=1000)
    assert sw == pytest.approx(delta.norm().item() / math.sqrt(3), rel=0.05)
    assert metrics.sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-9)


def test_mode_shares_coverage_and_spread():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    g = seeded(0)
    x = modes.repeat(500, 1) + torch.randn((2000, 2), generator=g)
    half = modes.repeat(500, 1) + 0.5 * torch.randn((2000, 2), generator=g)
    assert torch.allclose(metrics.mode_shares(x, modes), torch.full((4,), 0.25, dtype=torch.float64))
    assert metrics.spread_ratio(half, x, modes) == pytest.approx(0.5, rel=0.05)
    assert metrics.spread_ratio(half, x) == pytest.approx(0.5, rel=0.1)  # kNN version agrees
    one_mode = modes[:1] + torch.randn((400, 2), generator=g)
    assert metrics.mode_coverage(one_mode, modes) == 0.25
    # half the fair share (0.5 / 4 = 0.125) is enough to count as covered
    mostly = torch.cat([modes[:1].expand(130, 2), modes[1:].repeat(290, 1)])
    assert metrics.mode_coverage(mostly, modes) == 1.0


def test_auroc_is_the_mann_whitney_statistic():
    from scipy.stats import mannwhitneyu

    from pipeline.method.metrics import auroc

    labels = torch.tensor([0, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    assert auroc(torch.arange(8.0), torch.arange(8) >= 4) == 1.0
    assert auroc(-torch.arange(8.0), torch.arange(8) >= 4) == 0.0
    assert auroc(torch.ones(8), labels) == 0.5  # all tied
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200,), generator=g).double()  # many ties
    labels = torch.rand(200, generator=g) < 0.3
    pairs = int(labels.sum()) * int((~labels).sum())
    expected = mannwhitneyu(scores[labels].numpy(), scores[~labels].numpy()).statistic / pairs
    assert auroc(scores, labels) == pytest.approx(float(expected), abs=1e-12)
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(torch.ones(3), torch.zeros(3, dtype=torch.bool))


def test_heldout_fm_is_the_fm_loss_with_fixed_noise(gaussian_flow):
    z = gaussian_flow.mu + gaussian_flow.s * torch.randn(20_000, 3, generator=seeded(4), dtype=torch.float64)
    first = metrics.heldout_fm(gaussian_flow, z, seed=7)
    assert metrics.heldout_fm(gaussian_flow, z, seed=7) == first  # the same noise: comparable across priors
    assert metrics.heldout_fm(gaussian_flow, z, seed=8) != first
    assert first == pytest.approx(gaussian_flow.min_fm_loss(), rel=0.02)  # the exact field reaches the minimum
