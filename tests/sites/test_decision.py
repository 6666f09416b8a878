"""The reuse / finetune / refit decision on constructed sites, against a prior fitted on N(0, I)."""

import pytest
import torch

from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig
from pipeline.sites import Thresholds, decide, measure

SAMPLES = 1000


@pytest.fixture(scope="module")
def core():
    """A 2-D prior fitted on N(0, I), and its own held-out numbers (what a core prior's record holds)."""
    g = torch.Generator().manual_seed(0)
    prior = FlowPrior.fit(torch.randn(8000, 2, generator=g), width=64, depth=2,
                          fit=FitConfig(steps=1500, warmup=50, lr=2e-3), seed=0)
    own = measure(prior, torch.randn(2000, 2, generator=g), 1.0, 0.0, SAMPLES)
    return prior, own["fm_site"], own["nll_site"]


def site(core, points):
    prior, fm, nll = core
    return measure(prior, points, fm, nll, SAMPLES, seed=1)


def test_a_site_drawn_from_the_core_distribution_reuses_it(core):
    numbers = site(core, torch.randn(2000, 2, generator=torch.Generator().manual_seed(5)))
    assert abs(numbers["fm_ratio"] - 1) < 0.05 and abs(numbers["nll_gap"]) < 0.15
    assert decide(numbers) == "reuse"


def test_a_shifted_site_is_fine_tuned(core):
    # N(mu, I) with |mu| = 2: its expected NLL under N(0, I) is higher by |mu|^2 / 2 = 2 nats
    points = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6)) + torch.tensor([2.0, 0.0])
    numbers = site(core, points)
    assert 1.5 < numbers["nll_gap"] < 2.5 and 1.15 < numbers["fm_ratio"] < 35
    assert decide(numbers) == "finetune"


def test_an_unrelated_site_is_refit(core):
    points = 0.3 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(7)) + torch.tensor([12.0, -12.0])
    numbers = site(core, points)
    assert numbers["nll_gap"] > 5 and numbers["fm_ratio"] > 35
    assert decide(numbers) == "refit"


def test_the_rule_and_its_thresholds():
    t = Thresholds(finetune_fm=1.1, finetune_nll=0.5, refit_fm=3.0)
    assert decide({"fm_ratio": 1.09, "nll_gap": 0.49}, t) == "reuse"
    assert decide({"fm_ratio": 1.11, "nll_gap": 0.0}, t) == "finetune"
    assert decide({"fm_ratio": 0.9, "nll_gap": 0.51}, t) == "finetune"
    assert decide({"fm_ratio": 3.01, "nll_gap": 0.0}, t) == "refit"
    assert decide({"fm_ratio": 1.09, "nll_gap": 0.49}, Thresholds(finetune_fm=1.05)) == "finetune"  # a spec's own
    assert decide({"fm_ratio": 1.12, "nll_gap": 0.7}) == "reuse"  # the defaults: near-core sites reuse
    with pytest.raises(ValueError, match="refit_fm"):
        Thresholds(finetune_fm=2.0, refit_fm=1.0)
    with pytest.raises(ValueError, match="finite"):
        Thresholds(finetune_fm=float("nan"))
