"""``registry gc``: it deletes only what nothing references, and never an artifact a publisher relies on."""

import os
import threading
import time

import pytest

from pipeline.registry import Registry, leases, record_files, snapshots
from pipeline.registry.check import check
from pipeline.registry.leases import live_leases
from pipeline.registry.retention import collect
from pipeline.storage import layout
from tests.support.fleet import adapter_pair


def fill(store, tmp_path) -> dict:
    """A referenced artifact, an unreferenced one, a registered and an abandoned run folder, two snapshots."""
    registry = Registry(store)
    (tmp_path / "kept.bin").write_bytes(b"weights of a registered prior")
    kept = registry.register("prior", artifact=tmp_path / "kept.bin", name="fit-1")
    (tmp_path / "orphan.bin").write_bytes(b"an upload whose publisher crashed" * 100)
    store.put_file("artifacts/" + "0" * 64 + ".bin", tmp_path / "orphan.bin")
    for run, files in (("fit-1", 3), ("abandoned-7", 2)):
        for i in range(files):
            store.create(f"ray-runs/{run}/checkpoint_{i:06d}/model.pt", b"x" * 1000)
    snapshots.write(store, record_files.read(registry.store))
    sweep = registry.register("sweep")
    snapshots.write(store, record_files.read(registry.store))  # supersedes the first
    return {"registry": registry, "kept": kept, "sweep": sweep}


def test_gc_deletes_only_what_nothing_references(store, tmp_path):
    made = fill(store, tmp_path)
    registry, kept = made["registry"], made["kept"]
    preview = collect(registry, keep_days=0, dry_run=True)
    doomed = {d.key: d for d in preview.doomed}
    superseded = sorted(store.list(layout.SNAPSHOTS))[0]
    assert set(doomed) == {"artifacts/" + "0" * 64 + ".bin", "ray-runs/fit-1", "ray-runs/abandoned-7",
                           f"{layout.SNAPSHOTS}/{superseded}"}
    assert doomed["ray-runs/fit-1"].why.startswith("registered, 3 objects")
    assert doomed["ray-runs/abandoned-7"].bytes == 2000 and doomed["ray-runs/abandoned-7"].why.startswith("abandoned")
    assert preview.deleted == [] and len(store.list_tree("ray-runs")) == 5  # a dry run deletes nothing
    assert collect(registry, keep_days=1, dry_run=True).doomed == []  # everything is younger than a day

    done = collect(registry, keep_days=0)
    assert sorted(done.deleted) == sorted(doomed) and done.stopped is None and done.bytes == preview.bytes
    assert store.list_tree("ray-runs") == {} and store.list("artifacts") == [kept.artifact.split("/", 1)[1]]
    assert len(store.list(layout.SNAPSHOTS)) == 1 and registry.records() == [kept, made["sweep"]]
    assert check(registry).ok and live_leases(store) == []  # the lease is gone
    if store.is_local:
        assert not (store.backend.root / "ray-runs" / "fit-1").exists()  # no empty folders left behind


def test_gc_never_collects_the_core_an_adapter_site_prior_needs(store, tmp_path):
    registry = Registry(store)
    pair = adapter_pair(registry, tmp_path)
    core, adapter = pair["core"], pair["adapter"]
    assert adapter.parents == [core.id] and adapter.config["core"] == {"id": core.id, "hash": core.hash}
    orphan = "artifacts/" + "0" * 64 + ".bin"
    store.put_file(orphan, tmp_path / "core.bin")  # the control: gc at keep_days=0 does delete what nothing names
    assert [d.key for d in collect(registry, keep_days=0, dry_run=True).doomed] == [orphan]
    done = collect(registry, keep_days=0)
    assert done.deleted == [orphan] and store.exists(core.artifact) and store.exists(adapter.artifact)
    for record in (core, adapter):
        registry.fetch_artifact(record, tmp_path / "back.bin")  # whole: its hash checks
    assert check(registry).ok


def test_age_is_the_last_write_under_a_run_folder(tmp_path):
    from pipeline.storage import Store

    store = Store.open(str(tmp_path / "st"))
    registry = Registry(store)
    store.create("ray-runs/old/a", b"1")
    store.create("ray-runs/going/a", b"1")
    store.create("ray-runs/going/b", b"1")
    ten_days = time.time() - 10 * 86400
    for key in ("ray-runs/old/a", "ray-runs/going/a"):
        os.utime(store.backend.root / key, (ten_days, ten_days))
    assert [d.key for d in collect(registry, keep_days=7, dry_run=True).doomed] == ["ray-runs/old"]


def test_a_gc_between_a_publishers_artifact_and_its_record_does_not_lose_the_artifact(store, tmp_path, caplog):
    """The interleaving the lease protocol exists for: the artifact is already in the store (another record's
    bytes, or an unreferenced upload), the publisher finds it and skips the upload, and a real gc, run at the
    moment just before the record is written, deletes it as unreferenced."""
    registry = Registry(store)
    (tmp_path / "w.bin").write_bytes(b"bytes already in the store")
    first = registry.register("prior", artifact=tmp_path / "w.bin", make_current=False)
    store.delete(f"registry/records/{first.id}.json")  # now nothing references the artifact
    create = store.create

    def create_after_a_gc(key, data):
        if key.startswith("registry/records/"):
            assert first.artifact in collect(Registry(store), keep_days=0).deleted
        return create(key, data)

    store.create = create_after_a_gc
    record = registry.register("prior", artifact=tmp_path / "w.bin", make_current=False)
    store.create = create
    assert record.artifact == first.artifact and store.exists(record.artifact)  # published again
    assert "was collected while" in caplog.text
    registry.fetch_artifact(record, tmp_path / "back.bin")  # whole, and its hash checks


@pytest.mark.slow
def test_gc_racing_eight_publishers_never_deletes_a_referenced_artifact(store, tmp_path):
    registry = Registry(store)
    payloads = [f"artifact {i}".encode() * 50 for i in range(24)]
    for i, data in enumerate(payloads):  # every payload is already in the store, unreferenced: gc's prey
        (tmp_path / f"p{i}.bin").write_bytes(data)
        store.put_file(f"artifacts/{i:064d}.bin", tmp_path / f"p{i}.bin")
        registry.register("sweep", artifact=tmp_path / f"p{i}.bin")
    for record in registry.records():
        store.delete(f"registry/records/{record.id}.json")
    stop, collected = threading.Event(), []

    def gc_loop() -> None:
        while not stop.is_set():
            collected.extend(collect(Registry(store), keep_days=0).deleted)

    def publish(worker: int) -> None:
        for i in range(worker, len(payloads), 8):
            Registry(store).register("sweep", artifact=tmp_path / f"p{i}.bin", config={"worker": worker})

    gc = threading.Thread(target=gc_loop)
    gc.start()
    publishers = [threading.Thread(target=publish, args=(w,)) for w in range(8)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join()
    stop.set()
    gc.join()
    records = registry.records()
    assert len(records) == len(payloads) and collected  # gc ran and deleted (at least the planted objects)
    report = check(registry)
    assert [p for p in report.problems if p.area == "artifacts" and "missing" in p.message] == []
    for record in records[:3]:
        registry.fetch_artifact(record, tmp_path / "back.bin")


@pytest.mark.slow
def test_publishers_wait_while_a_gc_holds_a_live_lease(store, monkeypatch):
    store.create(f"{layout.LEASES}/{int(time.time()) + 3600}-abcd.lease", b"")
    store.create(f"{layout.LEASES}/{int(time.time()) - 3600}-dead.lease", b"")  # a crashed gc's, expired
    assert len(live_leases(store)) == 1
    slept = []
    monkeypatch.setattr(leases.time, "sleep", lambda s: slept.append(s) or store.delete(
        f"{layout.LEASES}/{live_leases(store)[0]}"))
    leases.wait_for_collectors(store)
    assert slept == [0.25] and live_leases(store) == []


def unreadable_record(store, tmp_path, damage: str) -> str:
    """An artifact that only one record file refers to, a file this flowprior cannot read (``damage``): a newer
    version's field, an unknown kind, an id that is not its name, a name that is not a record's, or not JSON."""
    import hashlib
    import json

    from pipeline.registry import Record

    (tmp_path / "w.bin").write_bytes(b"weights a newer flowprior registered")
    digest = hashlib.sha256((tmp_path / "w.bin").read_bytes()).hexdigest()
    key = f"artifacts/{digest}.bin"
    store.put_file(key, tmp_path / "w.bin")
    raw = json.loads(Record.new("prior", artifact=key, hash=digest).to_json())
    name = f"{raw['id']}.json"
    if damage == "newer field":
        raw["adapter_of"] = {"core": "prior-1"}
    elif damage == "unknown kind":
        raw["kind"] = "adapter"
    elif damage == "other id":
        name = "prior-20990101T000000-00000000.json"
    data = json.dumps(raw).encode()
    if damage == "not json":
        data = b"{truncated " + data[:-40]
    if damage == "stray name":
        name = f"{raw['id']} (1).json"
        if store.is_local:
            (store.backend.root / "registry" / "records").mkdir(parents=True, exist_ok=True)
            (store.backend.root / "registry" / "records" / name).write_bytes(data)
        else:
            store.backend.fs.pipe_file(store.backend._path(f"registry/records/{name}"), data)
    else:
        store.create(f"registry/records/{name}", data)
    return key


@pytest.mark.parametrize("damage", ["newer field", "unknown kind", "other id", "not json", "stray name"])
def test_gc_keeps_every_artifact_a_record_file_names_even_one_it_cannot_read(store, tmp_path, capsys, damage):
    from pipeline.cli import main

    registry = Registry(store)
    key = unreadable_record(store, tmp_path, damage)
    store.put_file("artifacts/" + "0" * 64 + ".bin", tmp_path / "w.bin")  # an orphan: it still goes
    preview = collect(registry, keep_days=0, dry_run=True)
    assert [d.key for d in preview.doomed] == ["artifacts/" + "0" * 64 + ".bin"]
    (unreadable, kept), = preview.kept.items()
    assert unreadable.startswith("registry/records/") and kept == [key]
    capsys.readouterr()
    assert main(["registry", "gc", "--keep-days", "0", "--store", store.uri]) == 0
    out = capsys.readouterr().out
    assert f"kept {key}:" in out and "cannot read that record file" in out and "deleted 1 item(s)" in out
    assert store.exists(key) and not store.exists("artifacts/" + "0" * 64 + ".bin")


class Clock:
    """The waiter's clock, advanced by its own sleeps (so a wait of minutes takes none)."""

    def __init__(self) -> None:
        self.now, self.slept = time.monotonic(), 0.0

    def time(self) -> float:
        return time.time() + self.slept

    def monotonic(self) -> float:
        return self.now + self.slept

    def sleep(self, seconds: float) -> None:
        self.slept += seconds


def test_a_lease_from_the_far_future_holds_a_publisher_no_longer_than_any_gc_runs(store, tmp_path, monkeypatch,
                                                                                 caplog):
    from pipeline.registry import CORE_ALIAS

    store.create(f"{layout.LEASES}/9999999999-ahead.lease", b"")  # year 2286: a clock far ahead, or a stray file
    clock = Clock()
    monkeypatch.setattr(leases, "time", clock)
    (tmp_path / "w.bin").write_bytes(b"weights")
    record = Registry(store).register("prior", artifact=tmp_path / "w.bin")
    assert leases.LEASE_SECONDS <= clock.slept <= leases.LEASE_SECONDS + leases.CLOCK_MARGIN + 1
    assert Registry(store).alias(CORE_ALIAS) == record.id and store.exists(record.artifact)  # the publish finished
    assert "gave up waiting for gc lease(s) 9999999999-ahead.lease" in caplog.text


def test_an_artifact_collected_mid_publish_is_published_again_under_the_key_its_record_holds(store, tmp_path):
    """The publish went beside a planted object (``<hash>-<random>.bin``); a gc took it before the record: the
    artifact comes back under that same key, not under a new one the record does not name."""
    import hashlib

    registry = Registry(store)
    (tmp_path / "w.bin").write_bytes(b"real weights")
    digest = hashlib.sha256(b"real weights").hexdigest()
    (tmp_path / "planted.bin").write_bytes(b"not those bytes")
    store.put_file(f"artifacts/{digest}.bin", tmp_path / "planted.bin")
    create = store.create

    def create_after_a_gc(key, data):
        if key.startswith("registry/records/"):
            beside = [k for k in store.list("artifacts") if k.startswith(f"{digest}-")]
            for name in beside:
                store.delete(f"artifacts/{name}")  # what a gc listing before the record would delete
        return create(key, data)

    store.create = create_after_a_gc
    record = registry.register("prior", artifact=tmp_path / "w.bin")
    store.create = create
    assert record.artifact.startswith(f"artifacts/{digest}-") and store.exists(record.artifact)
    registry.fetch_artifact(record, tmp_path / "back.bin")
