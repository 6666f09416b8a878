"""The CLI restates no behaviour: each flag's default and choices agree with the dataclass field or
constant the job uses. (The CLI cannot import those at start-up, as they import torch; this test
is what keeps the two in step.)"""

import argparse
import dataclasses
import re

import pytest

from pipeline.cli import build_parser


def _parser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _flags(*path: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _parser(*path)._actions}


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _stated(action: argparse.Action):
    """The default a flag whose parser default is None states in its help ("default: 3000", "default 1")."""
    match = re.search(r"default:? ([0-9][0-9.e+-]*)", action.help or "")
    assert match, f"--{action.dest}: its help states no default"
    return float(match.group(1))


def test_prior_fit_flags_default_to_the_spec_and_fit_config():
    from pipeline.jobs.prior_fit import PriorFitSpec
    from pipeline.method.precision import PRECISIONS
    from pipeline.method.training import FitConfig
    from pipeline.method.transforms import NORMALISERS, PROJECTIONS

    flags, spec = _flags("prior", "fit"), _defaults(PriorFitSpec)
    checked = 0
    for name, default in spec.items():
        if name in flags and flags[name].option_strings:
            assert flags[name].default == default, f"--{name}: CLI default {flags[name].default!r}, spec {default!r}"
            checked += 1
    assert checked >= 15
    fit = _defaults(FitConfig)
    for name in ("steps", "batch_size", "lr", "warmup", "t_group"):  # None in the parser: FitConfig decides
        assert flags[name].default is None and _stated(flags[name]) == pytest.approx(fit[name]), name
    assert flags["precision"].default == fit["precision"] and tuple(flags["precision"].choices) == PRECISIONS
    assert tuple(flags["projection"].choices) == PROJECTIONS and tuple(flags["normaliser"].choices) == NORMALISERS


def test_site_demo_toy_and_sweep_flags_agree_with_their_jobs():
    from pipeline.demo.run import DemoSettings
    from pipeline.jobs.sites import SITE_RETRIES
    from pipeline.sites.site_prior import MODES
    from pipeline.toy.experiment import ToyConfig
    from pipeline.toy.targets import TARGETS

    finetune = _flags("site", "finetune")
    assert tuple(finetune["mode"].choices) == ("auto", *MODES)
    assert finetune["retries"].default == SITE_RETRIES == _flags("site", "align")["retries"].default
    demo, settings = _flags("demo"), _defaults(DemoSettings)
    for name in ("out", "sites", "core_steps"):
        assert demo[name].default == settings[name], name
    toy = _flags("toy")
    assert toy["seed"].default == _defaults(ToyConfig)["seed"]
    assert tuple(toy["distribution"].choices) == (*TARGETS, "all")  # TARGETS imports torch; the CLI's names do not
