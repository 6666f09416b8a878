"""Site priors: a fine-tune starts from the core's weights and a refit from scratch, both in its space."""

import pytest
import torch

from pipeline.errors import DataError
from pipeline.method.configs import AdapterConfig, FitConfig
from pipeline.method.metrics import heldout_fm
from pipeline.method.prior import FlowPrior
from pipeline.sites.decision import probe_finetune
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
    # an adapter of the frozen core learns it too; a refit asked for one is whole all the same
    adapted = train_site_prior(core, train, heldout, "finetune", fit, adapter=AdapterConfig())
    assert adapted.info["method"] == "adapter" and adapted.info["history"][-1]["heldout_fm"] < 0.9 * reuse
    trained = sum(t.numel() for t in adapted.adapter.tensors.values())
    assert trained < sum(p.numel() for p in core.velocity.parameters()) / 2
    whole = train_site_prior(core, train, heldout, "refit", site_fit_config(core, "refit", 2, 1e-3, 256, 1),
                             adapter=AdapterConfig())
    assert whole.adapter is None and whole.info["method"] == "full"


@pytest.mark.slow
def test_unknown_modes_are_refused(core):
    with pytest.raises(ValueError, match="unknown mode"):
        site_fit_config(core, "retrain", 10, 1e-3, 8, 5)


@pytest.fixture(scope="module")
def tiny():
    """A 16-wide core fitted for 5 steps on 400 points, and those points in its space: enough to train from."""
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    prior = FlowPrior.fit(x, width=16, depth=1, fit=FitConfig(steps=5, warmup=0, batch_size=64, log_every=5), seed=0)
    return prior, prior.to_prior(x)


def test_a_fine_tune_that_diverges_is_an_error_naming_finetune_lr_not_a_prior(tiny):
    core, z = tiny
    steady = site_fit_config(core, "finetune", steps=20, lr=1e-3, batch_size=64, log_every=10)
    assert len(train_site_prior(core, z[:300], z[300:], "finetune", steady).info["history"]) == 2
    huge = site_fit_config(core, "finetune", steps=20, lr=1e3, batch_size=64, log_every=10)
    logged: list[dict] = []
    with pytest.raises(DataError, match=r"^the finetune diverged \(training FM loss nan at step 10 of 20, lr 1000\): "
                                        r"lower finetune\.lr in the site spec$"):
        train_site_prior(core, z[:300], z[300:], "finetune", huge, progress=logged.append)
    assert logged == []  # it stopped at the first log that diverged, before reporting it as progress


def test_a_refit_that_diverges_says_it_trains_at_the_core_fit_lr(tiny):
    core, z = tiny
    huge = FitConfig(steps=20, lr=1e3, warmup=2, batch_size=64, log_every=10)  # a core fitted at this lr
    with pytest.raises(DataError, match=r"^the refit diverged .*lr 1000\): a refit trains at the core fit's lr "
                                        r"\(finetune\.lr applies to fine-tunes only\)"):
        train_site_prior(core, z[:300], z[300:], "refit", huge)


def test_a_probe_that_diverges_names_the_probe_settings(tiny):
    core, z = tiny
    with pytest.raises(DataError, match=r"^the 20-step probe fine-tune diverged \(.*lr 1000\): lower finetune\.lr "
                                        r"or finetune\.probe_steps in the site spec$"):
        probe_finetune(core, z[:300], z[300:], steps=20, lr=1e3, batch_size=64)
