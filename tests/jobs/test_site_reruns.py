"""Rerunning a site step leaves the registry as a fresh run would: it heals a publish that died before its
alias move, finishes a core prior's rollback without training, follows the data a check measured, and a
forced rerun registers once however often its task is retried."""

import json

import pyarrow.parquet as pq
import pytest

from pipeline.datasets import la_haute_borne as lhb
from pipeline.registry import CORE_ALIAS, Registry, aliases
from pipeline.storage import Store
from tests.support.sites import SITE, flowprior, publish_core, small_spec

SITES = ("R80711", "R80721", "R80736", "R80790")  # the four demo turbines


def test_a_check_whose_alias_move_died_is_healed_by_its_rerun(store_uri, tmp_path, monkeypatch):
    from pipeline.sites import load_site_spec
    from pipeline.sites.check import check_site

    publish_core(store_uri, steps=5)
    spec = load_site_spec(small_spec(tmp_path, finetune={"probe_steps": 5}))
    registry = Registry(Store.open(store_uri))
    move = aliases.move

    def die_before_the_site_alias(store, alias, *args, **kwargs):
        if alias.startswith("site-check."):
            raise SystemExit("the worker died between the record and its alias move")
        return move(store, alias, *args, **kwargs)

    monkeypatch.setattr(aliases, "move", die_before_the_site_alias)
    with pytest.raises(SystemExit):
        check_site(spec, registry, say=lambda _: None)
    monkeypatch.setattr(aliases, "move", move)
    (check,) = registry.records(kind="site-check")
    assert registry.alias(f"site-check.{SITE}") is None
    said = []
    assert check_site(spec, registry, say=said.append).id == check.id  # already ran: nothing measured again
    assert registry.alias(f"site-check.{SITE}") == check.id and registry.records(kind="site-check") == [check]
    assert f"site-check.{SITE} now points at it (was None)" in said[-1]


@pytest.mark.slow
def test_rolling_back_the_core_prior_repoints_every_site_without_training(local_ray, tmp_path, capsys):
    """docs/fleet.md's rollback with the four demo turbines: two core priors, every site fine-tuned and aligned
    under each; `alias set core <older> --expect <newer>`, then the fleet's `site finetune` and `site align`
    again: every site points at its records of the older core, nothing trains, nothing is stale."""
    store_uri = str(tmp_path / "store")
    registry = Registry(Store.open(store_uri))
    specs = []
    for site in SITES:
        (tmp_path / site).mkdir()
        specs.append(str(small_spec(tmp_path / site, site=site)))
    steps = [("site", "finetune", *specs, "--mode", "finetune", "--store", store_uri),
             ("site", "align", *specs, "--store", store_uri)]
    cores = []
    for fit_steps in (60, 80):
        cores.append(publish_core(store_uri, steps=fit_steps).id)
        for step in steps:
            assert flowprior(capsys, *step)[0] == 0
    older, newer = cores
    encoders = {r.site: r for r in registry.records(kind="encoder")
                if registry.get(r.aligned_to).parents == [older]}
    assert sorted(encoders) == list(SITES) and registry.stale() == []
    records = registry.records()

    assert flowprior(capsys, "registry", "alias", "set", CORE_ALIAS, older, "--expect", newer,
                     "--store", store_uri)[0] == 0
    assert sorted(r.site for r in registry.stale()) == list(SITES)
    for step in steps:  # the tasks print "already ran" (in Ray's worker output, which `flowprior` leaves out)
        assert flowprior(capsys, *step)[0] == 0
    assert registry.records() == records  # nothing trained, nothing registered
    assert registry.stale() == []
    for site in SITES:
        assert registry.alias(f"encoder.{site}") == encoders[site].id
        assert registry.alias(f"site-prior.{site}") == encoders[site].aligned_to
    code, out, _ = flowprior(capsys, "fleet", "status", "--json", "--store", store_uri)
    fleet = json.loads(out)
    assert code == 0 and fleet["core"] == older and fleet["stale"] == []
    assert {s["site"]: (s["encoder"], s["aligned_core"]) for s in fleet["sites"]} == {
        site: (encoders[site].id, older) for site in SITES}


@pytest.mark.slow
def test_new_target_data_never_inherit_a_check_of_other_data(local_ray, tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    registry = Registry(Store.open(store_uri))
    reuse = small_spec(tmp_path, thresholds={"finetune_gain": 0.99, "refit_fm": 1e9})
    assert flowprior(capsys, "site", "check", str(reuse), "--store", store_uri)[0] == 0
    (old,) = registry.records(kind="site-check")
    assert old.config["decision"] == "reuse"

    table = pq.read_table(lhb.PARQUET)
    corrected = tmp_path / "corrected.parquet"
    pq.write_table(table.slice(0, len(table) - 1), corrected)  # the target's data changed (one row less)
    new_data = tmp_path / "new"
    new_data.mkdir()
    spec = small_spec(new_data, thresholds={"finetune_gain": 0.0, "refit_fm": 1e9},  # now it would fine-tune
                      target={"uri": str(corrected), "filters": {"site": SITE, "year": 2015, "fault": False},
                              "drop_nonfinite": True})
    code, _, err = flowprior(capsys, "site", "align", str(spec), "--store", store_uri)
    assert code == 2 and "measured other target data" in err and registry.records(kind="encoder") == []
    assert flowprior(capsys, "site", "finetune", str(spec), "--store", store_uri)[0] == 0
    checks = registry.records(kind="site-check")
    assert len(checks) == 2 and checks[-1].fingerprint != old.fingerprint  # it measured the new data first
    assert checks[-1].config["decision"] == "finetune" and len(registry.records(kind="site-prior")) == 1


def _finetune_then_die_once(spec, registry, **kwargs):
    """``finetune_site``, whose worker dies once right after registering (before the task could return)."""
    import os
    import uuid

    from pipeline.sites.finetune import finetune_site

    record = finetune_site(spec, registry, **kwargs)
    registry.store.create(f"died/{spec.site}/{uuid.uuid4().hex}", b"")
    if len(registry.store.list(f"died/{spec.site}")) == 1:
        os._exit(1)
    return record


@pytest.mark.slow
def test_a_forced_rerun_registers_once_when_its_task_is_retried(local_ray, tmp_path):
    from pipeline.jobs.sites import run_sites
    from pipeline.sites import load_site_spec
    from pipeline.sites.finetune import finetune_site

    store = Store.open(str(tmp_path / "store"))
    publish_core(store.uri, steps=5)
    spec = load_site_spec(small_spec(tmp_path))
    first, = run_sites(finetune_site, [spec], store, mode="finetune")
    forced, = run_sites(_finetune_then_die_once, [spec], store, mode="finetune", force=True, retries=1)
    assert len(store.list(f"died/{SITE}")) == 2  # the first attempt died after its registration
    site_priors = Registry(store).records(kind="site-prior")
    assert [r.id for r in site_priors] == [first.id, forced.id]  # the retry found the forced run's record
    assert forced.config["step"] == first.config["step"] == first.name and forced.name.startswith(f"{first.name}.")
