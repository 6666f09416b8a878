"""The fleet view: one status per site from one read of records and aliases; alias moves with reasons."""

import json

import pytest

from pipeline.cli import main
from pipeline.errors import RegistryError
from pipeline.registry import CORE_ALIAS, Registry, aliases, snapshots
from pipeline.registry.aliases import AliasMoved
from pipeline.registry.check import check
from pipeline.registry.fleet import age, fleet_status
from pipeline.storage import Store, layout
from tests.support.fleet import adapter_pair, build_fleet
from tests.support.null_metrics import null_metric_fleet


def test_fleet_status_answers_per_site_what_the_single_queries_answer(store):
    registry = Registry(store)
    fleet = build_fleet(registry)
    check = registry.register("site-check", site="s1", parents=[fleet["core1"].id], config={"decision": "finetune"},
                              metrics={"probe_gain": 0.12, "fm_ratio": 1.3, "nll_gap": 0.4, "mmd": 0.02})
    choice = {"mode": "align", "lam": 0.004, "lr": 1e-3, "draws": 4, "objective": 4.1, "feasible": True, "recon": 0.1}
    older = registry.register("sweep", config={"choices": {"s1": {**choice, "lam": 0.1}, "s2": choice}})
    newer = registry.register("sweep", config={"choices": {"s1": choice}})

    status = fleet_status(registry)
    assert status.core == registry.alias(CORE_ALIAS) == fleet["core2"].id
    by_site = {s.site: s for s in status.sites}
    assert sorted(by_site) == ["s1", "s2", "s3"]
    assert set(status.stale) == {r.site for r in registry.stale()} == {"s1", "s2"}
    for site, s in by_site.items():
        assert s.encoder == registry.alias(f"encoder.{site}") and s.aligned_to == registry.aligned(site).id
    s1, s2, s3 = by_site["s1"], by_site["s2"], by_site["s3"]
    assert (s1.aligned_kind, s1.aligned_core, s1.site_prior) == ("site-prior", fleet["core1"].id, fleet["s1"].id)
    assert (s2.aligned_kind, s2.aligned_core, s2.site_prior) == ("prior", fleet["core1"].id, None)
    assert (s3.aligned_kind, s3.aligned_core, s3.stale) == ("site-prior", fleet["core2"].id, False)
    assert (s1.check, s1.decision, s1.checked_against) == (check.id, "finetune", fleet["core1"].id)
    assert s1.check_numbers == {"probe_gain": 0.12, "fm_ratio": 1.3, "nll_gap": 0.4, "mmd": 0.02}
    assert s3.check is None and s3.check_numbers == {}
    assert (s1.sweep, s1.sweep_choice["lam"], "recon" in s1.sweep_choice) == (newer.id, 0.004, False)  # the latest
    assert (s2.sweep, s3.sweep) == (older.id, None)
    assert status.to_dict()["stale"] == status.stale and status.to_dict()["sites"][0]["site"] == "s1"


def test_an_empty_registry_is_an_empty_fleet(store):
    status = fleet_status(Registry(store))
    assert (status.core, status.sites, status.stale) == (None, [], [])


def test_current_aliases_come_from_one_listing_and_a_snapshot_that_never_overrides_the_entries(s3_store, monkeypatch):
    monkeypatch.setattr(snapshots, "COMPACT_AFTER", 3)
    store, registry = s3_store, Registry(s3_store)
    fleet = build_fleet(registry)
    expected = {a: aliases.latest(store, a) for a in aliases.names(store)}
    assert registry.current() == expected  # 6 aliases lacked >= 3: an alias snapshot was written
    (name,) = store.list(layout.ALIAS_SNAPSHOTS)
    reads = []
    monkeypatch.setattr(store, "read_many", lambda keys: reads.extend(keys) or [store.read(k) for k in keys])
    registry.move_alias("encoder.s1", fleet["e1"].id, reason="again")
    assert registry.current("encoder.") == {a: aliases.latest(store, a) for a in expected if a.startswith("encoder.")}
    assert reads == [f"{layout.ALIASES}/encoder.s1/{2:010d}.json"]  # only the entry the snapshot lacks
    # a forged alias snapshot (valid digest, wrong rows) is used only where the listing's MD5 vouches for a row
    forged = {f"core/{2:010d}.json": store.read(f"{layout.ALIASES}/core/{1:010d}.json")}
    store.delete(f"{layout.ALIAS_SNAPSHOTS}/{name}")
    snapshots.write(store, forged, layout.ALIAS_SNAPSHOTS)
    assert registry.current()["core"].target == fleet["core2"].id
    forged_key = f"{layout.ALIAS_SNAPSHOTS}/{snapshots.name_of(forged)}"
    report = check(registry, hashes=False)  # and registry check names it
    assert [(p.area, p.key) for p in report.problems] == [("snapshots", forged_key)]


def test_moves_keep_their_reason_refuse_the_wrong_kind_and_compare_and_swap(store):
    registry = Registry(store)
    fleet = build_fleet(registry)
    move = registry.move_alias(CORE_ALIAS, fleet["core1"].id, reason="roll back: core v2 drifts at s3",
                               expect=fleet["core2"].id)
    assert (move.previous, move.reason) == (fleet["core2"].id, "roll back: core v2 drifts at s3")
    assert registry.alias_history(CORE_ALIAS)[-1] == move and registry.alias_history(CORE_ALIAS)[0].reason is None
    assert registry.stale() == []  # stale follows the rollback: core1's family holds every encoder
    with pytest.raises(AliasMoved, match=f"points at {fleet['core1'].id} .*not at {fleet['core2'].id}"):
        registry.move_alias(CORE_ALIAS, fleet["core2"].id, expect=fleet["core2"].id)  # someone else moved it
    with pytest.raises(RegistryError, match="alias 'core' points at prior records; .* is an encoder of site s1"):
        registry.move_alias(CORE_ALIAS, fleet["e1"].id)
    with pytest.raises(RegistryError, match="of site s2; .* is an encoder of site s1"):
        registry.move_alias("encoder.s2", fleet["e1"].id)
    with pytest.raises(RegistryError, match="printable text"):
        registry.move_alias(CORE_ALIAS, fleet["core2"].id, reason="a\nb")
    assert registry.alias(CORE_ALIAS) == fleet["core1"].id  # none of the refused moves happened
    registry.move_alias("staging", fleet["e1"].id)  # an alias of the team's own takes any record


def test_entries_written_before_reasons_existed_still_parse(store):
    data = b'{"alias": "core", "moved_at": "2026-11-01T00:00:00+00:00", "previous": null, "target": "p", "version": 1}'
    assert aliases.parse(data, "x", "core", 1).reason is None
    move = aliases.move(store, "core", "p")  # and a move without a reason writes no reason key (old readers)
    assert b"reason" not in store.read(f"{layout.ALIASES}/core/{move.version:010d}.json")


@pytest.mark.parametrize("created, now, said", [
    ("2026-11-30T12:00:00+00:00", "2026-11-30T12:00:42+00:00", "42s"),
    ("2026-11-30T12:00:00+00:00", "2026-11-30T12:59:59+00:00", "59m"),
    ("2026-11-30T12:00:00", "2026-11-30T17:30:00+00:00", "5h"),
    ("2026-11-27T12:00:00+00:00", "2026-11-30T12:00:00+00:00", "3d"),
    (None, "2026-11-30T12:00:00+00:00", "-"),
])
def test_ages_read_as_people_say_them(created, now, said):
    assert age(created, now) == said


def test_fleet_status_shows_null_metrics_as_n_a_and_its_json_keeps_null(tmp_path, capsys):
    uri, fleet = null_metric_fleet(tmp_path)
    s1 = fleet_status(Registry(Store.open(uri))).sites[0]
    assert s1.check == fleet["check"].id
    assert s1.check_numbers == {"probe_gain": None, "fm_ratio": None, "nll_gap": None, "mmd": 0.02}
    assert main(["fleet", "status", "--store", uri]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "reuse" in rows["s1"] and "(probe n/a, fm_ratio n/a)" in rows["s1"] and "lambda n/a" in rows["s1"]
    assert "(probe n/a, fm_ratio n/a)" in rows["s2"]  # a check recorded without its numbers
    assert main(["fleet", "status", "--json", "--store", uri]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["sites"][0]["check_numbers"] == {"probe_gain": None, "fm_ratio": None, "nll_gap": None, "mmd": 0.02}
    assert status["sites"][0]["sweep_choice"]["lam"] is None



def test_fleet_status_shows_how_each_site_prior_is_stored_and_the_fleets_total(tmp_path, capsys):
    uri = str(tmp_path / "store")
    registry = Registry(Store.open(uri))
    fleet = build_fleet(registry)  # site priors of s1 and s3 registered without an artifact: full, size unknown
    pair = adapter_pair(registry, tmp_path)
    status = fleet_status(registry)
    by_site = {s.site: s for s in status.sites}
    assert (by_site["s9"].site_prior, by_site["s9"].site_prior_method, by_site["s9"].site_prior_bytes) == \
           (pair["adapter"].id, "adapter", 150_200)
    assert (by_site["s1"].site_prior_method, by_site["s1"].site_prior_bytes) == ("full", None)
    assert (by_site["s2"].site_prior, by_site["s2"].site_prior_method) == (None, None)
    assert (status.site_priors, status.adapters, status.site_prior_bytes, status.unsized) == (3, 1, 150_200, 2)
    assert status.core == fleet["core2"].id  # the adapter's core was not made current

    assert main(["fleet", "status", "--store", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "site priors: 3 current (1 adapter), 150.2 kB in the store (+2 of unknown size)"
    assert lines[2].split()[:6] == ["site", "encoder", "aligned", "to", "stale", "site"]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert "adapter 150.2 kB" in rows["s9"] and "full n/a" in rows["s1"] and "full n/a" in rows["s3"]
    assert main(["fleet", "status", "--json", "--store", uri]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["site_priors"], data["adapters"], data["site_prior_bytes"], data["unsized"]) == (3, 1, 150_200, 2)
    s9 = next(s for s in data["sites"] if s["site"] == "s9")
    assert (s9["site_prior_method"], s9["site_prior_bytes"]) == ("adapter", 150_200)
