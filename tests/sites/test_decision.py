"""The reuse / finetune / refit decision on constructed sites, against a prior fitted on a two-mode pool."""

import re

import pytest
import torch

from pipeline.errors import DataError
from pipeline.method.configs import FitConfig
from pipeline.method.prior import FlowPrior
from pipeline.registry import Registry
from pipeline.sites import Thresholds, load_site_spec
from pipeline.sites.decision import decide, measure, probe_finetune
from pipeline.sites.spec import FinetuneSettings
from pipeline.storage import Store
from tests.support.sites import SITE, flowprior, publish_core, small_spec

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
            **probe_finetune(prior, train, held, settings.probe_steps, settings.lr, settings.batch_size, seed=1)}


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


NUMBERS = {"fm_site": 1.1, "fm_core": 1.0, "fm_ratio": 1.1, "nll_site": 2.0, "nll_core": 1.9, "nll_gap": 0.1,
           "mmd": 0.01, "points": 200, "samples": 1000, "fm_probe": 1.05, "probe_gain": 0.045, "probe_steps": 100}
SETTING = {"fm_probe": "finetune.lr or finetune.probe_steps", "probe_gain": "finetune.lr or finetune.probe_steps",
           "fm_core": "flowprior prior fit", "nll_core": "flowprior prior fit", "fm_site": "target.uri, target.filters",
           "fm_ratio": "target.uri, target.filters", "nll_site": "target.uri, target.filters",
           "nll_gap": "target.uri, target.filters", "mmd": "target.uri, target.filters"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), None])
@pytest.mark.parametrize("name", sorted(SETTING))
def test_a_number_that_is_not_finite_is_an_error_naming_the_setting_never_a_decision(name, value):
    """A diverging probe (a large finetune.lr) reaches decide with NaN: that once decided reuse."""
    assert decide(NUMBERS) == "finetune"
    shown = "missing" if value is None else str(value)
    with pytest.raises(DataError, match=rf"^{name} is {shown}, not a finite number, so no decision was made: .*"
                                        + re.escape(SETTING[name])):
        decide({**NUMBERS, name: value}, Thresholds(finetune_gain=0.0, refit_fm=1.01))


def test_the_first_cause_is_named_and_a_number_the_rule_reads_must_be_there():
    with pytest.raises(DataError, match="^fm_probe is nan, .*the probe fine-tune diverged"):
        decide({**NUMBERS, "fm_probe": float("nan"), "probe_gain": float("nan")})
    with pytest.raises(DataError, match="^probe_gain is missing from the check's numbers, so no decision was made"):
        decide({"fm_ratio": 1.0})


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A store with a small core prior on the wind-farm data (a check runs against it in this process)."""
    uri = str(tmp_path_factory.mktemp("checks") / "store")
    return uri, publish_core(uri, steps=30)


def test_site_check_of_a_diverging_probe_is_one_error_naming_finetune_lr_and_records_nothing(published, tmp_path,
                                                                                             capsys):
    uri, _ = published
    spec = small_spec(tmp_path, finetune={"lr": 1e3, "probe_steps": 20, "log_every": 10})
    code, out, err = flowprior(capsys, "site", "check", str(spec), "--store", uri)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "probe fine-tune diverged" in err and "lower finetune.lr or finetune.probe_steps in the site spec" in err
    assert f"site {SITE} ({spec}): " in err  # the error names the site and its spec
    assert Registry(Store.open(uri)).records(kind="site-check") == []  # no decision, nothing recorded


def test_site_check_shows_a_recorded_check_with_null_numbers_as_n_a(published, tmp_path, capsys):
    """A check recorded before checks refused non-finite numbers (NaN stored as null) is shown, not a TypeError."""
    from pipeline.sites.steps import step_name

    uri, core = published
    spec = load_site_spec(small_spec(tmp_path))
    step = step_name("check", spec, core.id, [spec.target.scan().fingerprint])
    old = Registry(Store.open(uri)).register(
        "site-check", site=SITE, parents=[core.id], name=step, config={"decision": "reuse", "step": step},
        metrics={"probe_gain": float("nan"), "fm_ratio": 1.1, "nll_gap": None, "mmd": float("inf")})
    code, out, _ = flowprior(capsys, "site", "check", spec.path, "--store", uri)
    assert code == 0 and f"{step} already ran: {old.id}" in out
    (row,) = [line for line in out.splitlines() if line.startswith(SITE)]
    assert row.split() == [SITE, "reuse", "n/a", "1.100", "n/a", "n/a", old.id]
