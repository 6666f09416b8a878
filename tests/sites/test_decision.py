"""The reuse / finetune / refit decision on constructed sites, against a prior fitted on a two-mode pool."""

import pytest
import torch

from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig
from pipeline.sites import Thresholds, decide, measure, probe
from pipeline.sites.spec import FinetuneSettings

SAMPLES = 1000
MODES = torch.tensor([[-2.5, 0.0], [2.5, 0.0]])


def pool(n: int, seed: int, modes: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """``n`` points of the pool (two Gaussians, sd 0.5), or of the listed modes only."""
    g = torch.Generator().manual_seed(seed)
    which = torch.tensor(modes)[torch.randint(0, len(modes), (n,), generator=g)]
    return MODES[which] + 0.5 * torch.randn(n, 2, generator=g)


@pytest.fixture(scope="module")
def core():
    """A prior fitted on the pool, and its own held-out numbers (what a core prior's record holds)."""
    prior = FlowPrior.fit(pool(8000, 0), width=64, depth=2, fit=FitConfig(steps=1500, warmup=50, lr=2e-3), seed=0)
    own = measure(prior, prior.to_prior(pool(2000, 1)), 1.0, 0.0, SAMPLES)
    return prior, own["fm_site"], own["nll_site"]


def check(core, points: torch.Tensor) -> dict:
    """What ``site check`` measures: the one-sided numbers, then a probe on 90% of the points."""
    prior, fm, nll = core
    z = prior.to_prior(points)
    train, held = z[: int(0.9 * len(z))], z[int(0.9 * len(z)):]
    settings = FinetuneSettings()
    return {**measure(prior, held, fm, nll, SAMPLES, seed=1),
            **probe(prior, train, held, settings.probe_steps, settings.lr, settings.batch_size, seed=1)}


@pytest.mark.slow
def test_a_site_drawn_from_the_pool_reuses_the_core(core):
    numbers = check(core, pool(20000, 5))
    assert abs(numbers["fm_ratio"] - 1) < 0.05 and abs(numbers["probe_gain"]) < 0.02
    assert decide(numbers) == "reuse"


@pytest.mark.slow
def test_a_site_that_is_one_part_of_the_pool_is_fine_tuned(core):
    """One mode of two: the core explains every point well (one-sided numbers say reuse), but spends half
    its mass where the site has none; the probe fine-tune finds the gain."""
    numbers = check(core, pool(20000, 6, modes=[1]))
    assert numbers["nll_gap"] < 0.5 and numbers["fm_ratio"] < 1.15  # what the one-sided check saw
    assert numbers["probe_gain"] > 0.05 and numbers["probe_steps"] == 100
    assert decide(numbers) == "finetune"


@pytest.mark.slow
def test_an_unrelated_site_is_refit(core):
    numbers = check(core, 0.3 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(7)) + 14.0)
    assert numbers["fm_ratio"] > 35 and decide(numbers) == "refit"


def test_the_rule_and_its_thresholds():
    t = Thresholds(finetune_gain=0.03, refit_fm=3.0)
    assert decide({"fm_ratio": 2.9, "probe_gain": 0.029}, t) == "reuse"
    assert decide({"fm_ratio": 0.9, "probe_gain": 0.031}, t) == "finetune"
    assert decide({"fm_ratio": 3.01, "probe_gain": 0.0}, t) == "refit"
    assert decide({"fm_ratio": 1.5, "probe_gain": 0.015}) == "reuse"  # the defaults
    with pytest.raises(ValueError, match="refit_fm must be > 1"):
        Thresholds(refit_fm=0.5)
    with pytest.raises(ValueError, match=r"finetune_gain is a fraction .* in \[0, 1\)"):
        Thresholds(finetune_gain=1.5)
    with pytest.raises(ValueError, match="finite"):
        Thresholds(finetune_gain=float("nan"))
