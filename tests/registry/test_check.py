"""``flowprior registry check``: a whole registry passes; each kind of damage is found, named, and left alone."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from pipeline.registry import Registry, record_files, snapshots
from pipeline.registry.check import check as check_registry
from pipeline.storage import Store, layout
from tests.support.fleet import adapter_pair, build_fleet


def check(store_uri: str, *args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "pipeline", "registry", "check", "--json", "--store", store_uri,
                             *args], capture_output=True, text=True, timeout=120, env=os.environ)
    return result.returncode, json.loads(result.stdout)


def everything(store: Store) -> dict[str, bytes]:
    root = store.backend.root
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_whole_registry_passes_and_each_damage_is_named_without_changing_anything(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    registry = Registry(store)
    fleet = build_fleet(registry)
    (tmp_path / "w.bin").write_bytes(b"weights")
    weights = registry.register("prior", artifact=tmp_path / "w.bin", make_current=False)
    snapshots.write(store, record_files.read(registry.store))
    code, report = check(store.uri)
    assert code == 0 and report["ok"] and report["counts"]["records"] == len(fleet) + 1, report

    store.create("registry/records/bad-null.json", b"null")
    store.create("registry/records/bad-name.json", fleet["core1"].to_json())
    dangling = json.loads(fleet["s1"].to_json())
    dangling.update(id="site-prior-dangling", parents=["prior-gone"])
    store.create("registry/records/site-prior-dangling.json", json.dumps(dangling).encode())
    planted = hashlib.sha256(b"real bytes").hexdigest()
    store.create(f"artifacts/{planted}.safetensors", b"planted bytes")
    (store.backend.root / weights.artifact).write_bytes(b"tampered")
    store.create("registry/aliases/core/0000000009.json", b'{"alias": "core"}')  # a gap, and not an entry
    forged = record_files.read(registry.store)
    forged[fleet["core2"].id] = forged[fleet["core2"].id].replace(b'"v": 2', b'"v": 3')
    snapshots.write(store, forged)
    before = everything(store)

    code, report = check(store.uri)
    assert code == 1 and not report["ok"]
    found = {(p["area"], p["key"].rsplit("/", 1)[-1]) for p in report["problems"]}
    assert {("records", "bad-null.json"), ("records", "bad-name.json"), ("links", "site-prior-dangling.json"),
            ("artifacts", f"{planted}.safetensors"), ("artifacts", weights.artifact.rsplit("/", 1)[-1]),
            ("aliases", "core"), ("aliases", "0000000009.json"),
            ("snapshots", snapshots.name_of(forged))} <= found, found
    messages = " ".join(p["message"] for p in report["problems"])
    assert "holds record id" in messages and "'prior-gone'" in messages and "planted or corrupted" in messages
    assert everything(store) == before  # nothing modified

    code, report = check(store.uri, "--repair")
    assert code == 1 and report["repaired"]  # the other problems are not its to fix
    after = everything(store)
    assert {k for k in after if not k.startswith("registry/snapshots/")} == \
           {k for k in before if not k.startswith("registry/snapshots/")}
    assert all(after[k] == before[k] for k in after if not k.startswith("registry/snapshots/"))
    code, report = check(store.uri)
    assert not [p for p in report["problems"] if p["area"] == "snapshots"]


def test_a_planted_object_at_the_hash_key_does_not_poison_later_publishes(store, tmp_path):
    registry = Registry(store)
    (tmp_path / "w.bin").write_bytes(b"the real weights")
    digest = hashlib.sha256(b"the real weights").hexdigest()
    store.create(f"artifacts/{digest}.bin", b"something else")  # planted before anyone published
    record = registry.register("prior", artifact=tmp_path / "w.bin")
    assert record.artifact != f"artifacts/{digest}.bin" and record.hash == digest
    assert registry.fetch_artifact(record, tmp_path / "back.bin").read_bytes() == b"the real weights"


@pytest.mark.slow
def test_repair_on_s3_replaces_a_forged_snapshot_with_one_of_the_record_files(s3_store):
    registry = Registry(s3_store)
    records = [registry.register("prior", metrics={"fm": 1.0}) for _ in range(3)]
    forged = {r.id: r.to_json().replace(b'"fm": 1.0', b'"fm": 0.5') for r in records}
    snapshots.write(s3_store, forged)
    code, report = check(s3_store.uri)
    assert code == 1 and [p["area"] for p in report["problems"]] == ["snapshots"]
    code, report = check(s3_store.uri, "--repair")
    fresh = snapshots.name_of(record_files.read(registry.store))
    assert report["repaired"] == [f"registry/snapshots/{snapshots.name_of(forged)}", f"registry/snapshots/{fresh}"]
    assert s3_store.list(layout.SNAPSHOTS) == [fresh]
    assert check(s3_store.uri) == (0, check(s3_store.uri)[1])


def test_every_adapter_site_prior_is_checked_against_its_core(tmp_path):
    registry = Registry(Store.open(str(tmp_path / "store")))
    pair = adapter_pair(registry, tmp_path)
    core, adapter = pair["core"], pair["adapter"]
    report = check_registry(registry)
    assert report.ok and report.counts["adapters"] == 1, report.problems

    other = registry.register("prior", make_current=False)
    config = {"method": "adapter", "core": {"id": core.id, "hash": core.hash}}
    bad = {
        "rehashed": registry.register("site-prior", site="a", parents=[core.id],
                                      config={**config, "core": {"id": core.id, "hash": "0" * 64}}),
        "other parent": registry.register("site-prior", site="b", parents=[other.id], config=config),
        "no core": registry.register("site-prior", site="c", parents=[core.id], config={"method": "adapter"}),
        "gone core": registry.register("site-prior", site="d", parents=[core.id],
                                       config={**config, "core": {"id": "prior-gone", "hash": core.hash}}),
    }
    registry.register("site-prior", site="e", parents=[core.id], config={"method": "full"})  # not an adapter
    report = check_registry(registry)
    found = {p.key.rsplit("/", 1)[-1][:-5]: p.message for p in report.problems}
    assert [p.area for p in report.problems] == ["adapters"] * 4 and set(found) == {r.id for r in bad.values()}
    assert report.counts["adapters"] == 5
    assert f"adapter of core {core.id} with artifact hash 000000000000... but that record holds " \
           f"{core.hash[:12]}..." in found[bad["rehashed"].id]
    assert bad["rehashed"].id in found[bad["rehashed"].id]
    assert f"adapter of core {core.id} but its first parent is {other.id}" in found[bad["other parent"].id]
    assert "names no core (id and hash)" in found[bad["no core"].id]
    assert "adapter of core 'prior-gone', which is not a readable record" in found[bad["gone core"].id]

    (tmp_path / "store" / core.artifact).unlink()  # the core's artifact is lost: every adapter of it is broken
    report = check_registry(registry, hashes=False)
    lost = [p for p in report.problems if "whose artifact is missing" in p.message]
    assert ("artifacts", core.artifact) in {(p.area, p.key) for p in report.problems}
    assert {p.key for p in lost} == {f"registry/records/{r.id}.json" for r in (adapter, bad["rehashed"],
                                                                               bad["other parent"])}
    assert any(adapter.id in p.message and core.id in p.message for p in lost)
