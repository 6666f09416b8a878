"""A site step's store requests do not grow with the registry: finding that a step already ran, the site's
latest check and priors, and the core go by names and aliases, never by listing the records."""

import pytest

from pipeline.registry import Registry
from pipeline.sites import load_site_spec
from pipeline.sites.align import align_site
from pipeline.sites.steps import finished_path
from pipeline.storage import Store
from pipeline.storage.layout import RECORDS
from tests.support.counting import CountingStore, requests_per_step
from tests.support.fleet import other_sites
from tests.support.sites import publish_core, small_spec


@pytest.mark.slow
def test_a_steps_store_requests_are_the_same_at_10_and_1000_records_per_site_kind(tmp_path, capsys):
    store = Store.open(str(tmp_path / "store"))
    core = publish_core(store.uri, steps=5)
    specs = {}
    for site in ("R80711", "R80721"):
        (tmp_path / site).mkdir()
        specs[site] = load_site_spec(small_spec(
            tmp_path / site, site=site, thresholds={"finetune_gain": 0.0, "refit_fm": 1e9},  # every site fine-tunes
            finetune={"steps": 10, "refit_steps": 10, "probe_steps": 5, "log_every": 5},
            alignment={"lambda": 1.0, "steps": 10, "log_every": 5, "eval_points": 200}))
    counting = CountingStore(store)
    other_sites(store, core.id, 0, 10)
    small = {"fresh": requests_per_step(counting, specs["R80711"]),
             "rerun": requests_per_step(counting, specs["R80711"])}
    other_sites(store, core.id, 10, 1000)
    assert len(store.list(RECORDS)) == 1 + 3 * 1000 + 3
    large = {"fresh": requests_per_step(counting, specs["R80721"]),
             "rerun": requests_per_step(counting, specs["R80721"])}
    with capsys.disabled():
        print(f"\nstore requests per step, at 10 and at 1,000 records per site kind: {small} / {large}")
    assert large == small
    assert all(sum(n.values()) <= 10 for n in small["rerun"].values()), small  # a step that ran: a few requests
    registry = Registry(store)
    for site in specs:  # and each site's path is complete: a check, a site prior, an encoder aligned to it
        site_prior = registry.get(registry.alias(f"site-prior.{site}"))
        assert registry.aligned(site).id == site_prior.id and site_prior.parents == [core.id]


@pytest.mark.slow
def test_a_finished_path_is_found_by_names_and_aliases_and_only_as_a_rerun_would_find_it(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    core = publish_core(store.uri, steps=5)
    (tmp_path / "R80711").mkdir()
    spec = load_site_spec(small_spec(
        tmp_path / "R80711", site="R80711", thresholds={"finetune_gain": 0.0, "refit_fm": 1e9},  # it fine-tunes
        finetune={"steps": 10, "refit_steps": 10, "probe_steps": 5, "log_every": 5},
        alignment={"lambda": 1.0, "steps": 10, "log_every": 5, "eval_points": 200}))
    counting = CountingStore(store)
    registry = Registry(counting)
    assert finished_path(spec, registry, core.id) is None  # nothing ran yet
    requests_per_step(counting, spec)  # check, fine-tune, align
    other_sites(store, core.id, 0, 1000)
    counting.take()
    check, site_prior, encoder = finished_path(spec, registry, core.id)
    assert sum(counting.take().values()) <= 15  # 1,000 records a kind: read by names and aliases, not listed
    assert [check.id, site_prior.id, encoder.id] == [registry.alias(f"{kind}.R80711")
                                                     for kind in ("site-check", "site-prior", "encoder")]
    assert encoder.aligned_to == site_prior.id and check.config["decision"] == "finetune"
    assert finished_path(spec, registry, core.id, until="check") == (check, None, None)
    assert finished_path(spec, registry, core.id, until="finetune") == (check, site_prior, None)
    assert finished_path(spec, registry, "prior-0123456789abcdef01234567") is None  # against another prior
    other = align_site(spec, registry, lam=0.5, say=lambda _: None).record  # encoder.R80711 now points at it
    assert registry.alias("encoder.R80711") == other.id != encoder.id
    assert finished_path(spec, registry, core.id) is None  # a rerun would move the alias back
    registry.move_alias("encoder.R80711", encoder.id)
    assert finished_path(spec, registry, core.id) == (check, site_prior, encoder)
    store.delete(registry.artifact_key(site_prior))  # a rerun would fine-tune again
    assert finished_path(spec, registry, core.id) is None
