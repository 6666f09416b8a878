"""Site priors: a fine-tune starts from the core's weights and a refit from scratch, both in its space."""

import pytest
import torch

from pipeline.method.metrics import heldout_fm
from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig
from pipeline.sites.site_prior import site_fit_config, train_site_prior


@pytest.fixture(scope="module")
def core():
    x = torch.randn(6000, 2, generator=torch.Generator().manual_seed(0))
    return FlowPrior.fit(x, width=64, depth=2, fit=FitConfig(steps=1000, warmup=50, lr=2e-3), seed=0)


@pytest.mark.slow
def test_fine_tune_beats_reuse_and_starts_where_the_core_is(core):
    g = torch.Generator().manual_seed(1)
    shifted = core.to_prior(torch.randn(4000, 2, generator=g) * 0.5 + torch.tensor([1.0, 1.0]))
    train, heldout = shifted[:3600], shifted[3600:]
    reuse = heldout_fm(core.velocity, heldout, seed=0)
    fit = site_fit_config(core, "finetune", steps=300, lr=1e-3, batch_size=256, log_every=50)
    tuned = train_site_prior(core, train, heldout, "finetune", fit)
    refit = train_site_prior(core, train, heldout, "refit",
                             site_fit_config(core, "refit", steps=300, lr=1e-3, batch_size=256, log_every=50))
    fine, scratch = tuned.info["history"], refit.info["history"]
    assert fine[-1]["heldout_fm"] < 0.9 * reuse  # it learned the shift
    assert fine[0]["heldout_fm"] < scratch[0]["heldout_fm"]  # a head start from the core's weights
    assert tuned.space is core.space
    assert tuned.info["mode"] == "finetune" and fit.lr == 1e-3 and fit.warmup == 30
    assert not any(p.requires_grad for p in core.velocity.parameters())  # the core itself is untouched
    assert heldout_fm(core.velocity, heldout, seed=0) == reuse


@pytest.mark.slow
def test_unknown_modes_are_refused(core):
    with pytest.raises(ValueError, match="unknown mode"):
        site_fit_config(core, "retrain", 10, 1e-3, 8, 5)
