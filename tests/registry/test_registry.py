import pyarrow as pa
import pytest

from pipeline.errors import RegistryError
from pipeline.registry import CORE_ALIAS, Registry, record_files
from pipeline.registry.records import records_table
from pipeline.storage import layout
from tests.support.fleet import build_fleet


def test_links_to_missing_records_and_bad_ids_are_refused(store):
    registry = Registry(store)
    with pytest.raises(RegistryError, match="no record 'prior-404'"):
        registry.register("site-prior", site="s1", parents=["prior-404"])
    with pytest.raises(ValueError, match="invalid record id"):
        registry.get("../../etc/passwd")
    with pytest.raises(ValueError, match="invalid site id"):
        registry.register("encoder", site="../x", aligned_to="p")
    assert registry.records() == []


def test_the_hook_hears_of_each_new_record_once_and_not_of_a_named_runs_rerun(store):
    heard = []
    registry = Registry(store, on_register=lambda record, by: heard.append((record.id, by)))
    first = registry.register("prior", name="fit-1", fingerprint="a" * 64)
    assert registry.register("prior", name="fit-1", fingerprint="a" * 64) == first  # a rerun: no new record
    second = registry.register("encoder", site="s1", aligned_to=first.id)
    assert heard == [(first.id, registry), (second.id, registry)]
    Registry(store).register("sweep")  # a registry without a hook tells no one
    assert len(heard) == 2


def test_the_registry_answers_its_questions(store):
    registry = Registry(store)
    fleet = build_fleet(registry)
    assert [r.id for r in registry.records()] == [r.id for r in fleet.values()]
    assert {r.id for r in registry.records(kind="encoder", site="s3")} == {fleet["e3_old"].id, fleet["e3"].id}
    assert registry.aligned("s1").id == fleet["s1"].id
    assert registry.aligned("s3").id == fleet["s3"].id  # the current encoder, not the older one
    assert registry.aligned("s9") is None
    # lineage of s1's encoder: encoder -> site prior -> core v1 (with its data fingerprint)
    assert [r.id for r in registry.lineage(fleet["e1"].id)] == [fleet[k].id for k in ("e1", "s1", "core1")]
    assert registry.lineage(fleet["e1"].id)[-1].fingerprint == "a" * 64
    # core v2 is current: s1 and s2 are aligned to core v1's family; s3 to core v2's
    assert registry.alias(CORE_ALIAS) == fleet["core2"].id
    assert {r.site for r in registry.stale()} == {"s1", "s2"}
    assert registry.stale(prior=fleet["core1"].id) == []  # core2 descends from core1: nothing is stale
    assert [m.target for m in registry.alias_history("encoder.s3")] == [fleet["e3_old"].id, fleet["e3"].id]


def test_records_read_into_one_pyarrow_table(store):
    registry = Registry(store)
    fleet = build_fleet(registry)
    table = records_table(registry.records())
    assert isinstance(table, pa.Table) and table.num_rows == len(fleet)
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.filter(pa.compute.equal(table["kind"], "encoder")).num_rows == 4
    assert table["parents"].to_pylist()[1] == [fleet["core1"].id]


def test_stale_without_a_core_prior_says_so(store):
    with pytest.raises(RegistryError, match="no current core prior"):
        Registry(store).stale()


def test_alias_moves_form_a_chain(store):
    registry = Registry(store)
    ids = [registry.register("prior", make_current=False).id for _ in range(3)]
    for rid in ids:
        registry.move_alias("candidate", rid)
    history = registry.alias_history("candidate")
    assert [(m.version, m.target, m.previous) for m in history] == [
        (1, ids[0], None), (2, ids[1], ids[0]), (3, ids[2], ids[1])]
    assert registry.alias(CORE_ALIAS) is None  # make_current=False left the core alias alone
    with pytest.raises(RegistryError, match="no record"):
        registry.move_alias("candidate", "prior-missing")


def test_snapshots_make_ls_read_one_object_and_never_change_its_answer(s3_store, monkeypatch):
    from pipeline.registry import snapshots

    store = s3_store
    monkeypatch.setattr(snapshots, "COMPACT_AFTER", 3)
    registry = Registry(store)
    first = [registry.register("prior", config={"i": i}) for i in range(4)]
    assert registry.records() == first  # 4 missing >= 3: this call also wrote a snapshot
    (name,) = store.list(layout.SNAPSHOTS)
    assert set(snapshots.read_latest(store)) == {r.id for r in first}
    later = registry.register("encoder", site="s1", aligned_to=first[0].id)
    reads = []
    monkeypatch.setattr(store, "read_many", lambda keys: reads.extend(keys) or [store.read(k) for k in keys])
    assert registry.records() == [*first, later]  # snapshot + the one record it lacks
    assert reads == [f"registry/records/{later.id}.json"]
    assert store.list(layout.SNAPSHOTS) == [name]  # 1 missing < 3: no new snapshot


def test_a_snapshot_never_overrides_the_record_files(s3_store, tmp_path, monkeypatch):
    """A snapshot with a valid digest whose rows differ from the record files (written by a buggy or hostile
    writer) is used only where the listing's MD5 vouches for a row: the record files win everywhere."""
    from pipeline.registry import snapshots

    monkeypatch.setattr(snapshots, "COMPACT_AFTER", 1000)
    store, registry = s3_store, Registry(s3_store)
    honest = [registry.register("prior", metrics={"fm": 1.0}) for _ in range(2)]
    forged = {r.id: r.to_json().replace(b'"fm": 1.0', b'"fm": 0.5') for r in honest}
    forged["prior-imposter"] = honest[0].to_json().replace(honest[0].id.encode(), b"prior-imposter")
    snapshots.write(store, forged)  # a well-formed snapshot: its own digest matches
    assert set(snapshots.read_latest(store)) == {*forged}
    assert [r.metrics for r in registry.records()] == [{"fm": 1.0}, {"fm": 1.0}]
    assert registry.stale(honest[1].id) == [] and registry.alias(CORE_ALIAS) == honest[1].id


def test_local_stores_read_the_record_files_and_write_no_snapshot(tmp_path, monkeypatch):
    from pipeline.registry import snapshots
    from pipeline.storage import Store

    monkeypatch.setattr(snapshots, "COMPACT_AFTER", 1)
    store = Store.open(str(tmp_path / "st"))
    registry = Registry(store)
    records = [registry.register("prior", metrics={"fm": 1.0}) for _ in range(2)]
    assert registry.records() == records
    assert store.list(layout.SNAPSHOTS) == []  # a local listing cannot vouch for a snapshot's rows


@pytest.mark.parametrize("content, message", [
    (b"null", "a JSON NoneType, not an object"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b"{not json", "not JSON"),
    (b'{"id": 1}', "unknown fields"),
])
def test_a_bad_record_file_is_named_and_the_others_still_list(store, content, message):
    registry = Registry(store)
    good = registry.register("prior")
    store.create("registry/records/bad-1.json", content)
    with pytest.raises(RegistryError, match=f"registry/records/bad-1.json: not a valid record .*{message}"):
        registry.get("bad-1")
    assert registry.records() == [good]  # one bad file does not hide the fleet (it is logged)


def test_a_record_is_served_only_under_its_own_name(store):
    registry = Registry(store)
    honest = registry.register("prior")
    store.create("registry/records/bad-1.json", honest.to_json().replace(honest.id.encode(), b"prior-imposter"))
    with pytest.raises(RegistryError, match="bad-1.json: holds record id 'prior-imposter', not the 'bad-1'"):
        registry.get("bad-1")
    assert [r.id for r in registry.records()] == [honest.id]


@pytest.mark.parametrize("field, value, message", [
    ("parents", "abc", "field parents must be a list"),
    ("parents", [1], "field parents must be a list of record ids"),
    ("config", [], "field config must be an object"),
    ("hash", "xyz", "field hash must be a SHA-256"),
    ("created_at", "yesterday", "field created_at must be an ISO 8601 time"),
])
def test_record_fields_must_have_their_types(field, value, message):
    import json

    from pipeline.registry import Record

    raw = json.loads(Record.new("prior").to_json())
    raw[field] = value
    if field == "hash":
        raw["artifact"] = "artifacts/x"
    with pytest.raises(RegistryError, match=message):
        Record.from_json(json.dumps(raw).encode(), "r.json")


@pytest.mark.slow
def test_concurrent_runs_of_one_name_register_once_and_other_settings_are_refused(store):
    from concurrent.futures import ThreadPoolExecutor

    registry = Registry(store)
    publish = lambda _: registry.register("prior", name="nightly", settings={"lr": 1e-3}, fingerprint="a" * 64).id  # noqa: E731
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(publish, range(8)))
    (record,) = registry.records()
    assert ids == {record.id} and [m.target for m in registry.alias_history(CORE_ALIAS)] == [record.id]
    with pytest.raises(RegistryError, match="'nightly' is already registered as .* with other settings"):
        registry.register("prior", name="nightly", settings={"lr": 1e-2}, fingerprint="a" * 64)
    with pytest.raises(RegistryError, match="with other data"):
        registry.register("prior", name="nightly", settings={"lr": 1e-3}, fingerprint="b" * 64)
    assert len(registry.records()) == 1


def test_a_bad_alias_entry_is_named(store):
    registry = Registry(store)
    registry.register("prior")
    store.create("registry/aliases/core/0000000002.json", b"null")
    with pytest.raises(RegistryError, match=r"registry/aliases/core/0000000002.json: not a valid alias entry"):
        registry.alias(CORE_ALIAS)
    with pytest.raises(RegistryError, match=r"0000000002.json: not a valid alias entry"):
        registry.alias_history(CORE_ALIAS)


def test_a_stray_file_name_in_the_registry_is_skipped_with_a_warning_and_reported_by_check(store, caplog, capsys):
    from pipeline.cli import main
    from pipeline.registry.check import check

    registry = Registry(store)
    good = registry.register("prior")
    name = f"registry/records/{good.id} (1).json"  # a copy made by hand or by a sync tool
    if store.is_local:
        (store.backend.root / name).write_bytes(good.to_json())
    else:
        store.backend.fs.pipe_file(store.backend._path(name), good.to_json())
    with caplog.at_level("WARNING"):
        assert registry.records() == [good]
    assert f"{good.id} (1).json: not a record file name" in caplog.text
    report = check(registry)
    assert [(p.area, p.key) for p in report.problems] == [("records", name)]
    for command in (["registry", "ls"], ["fleet", "status"], ["registry", "gc", "--dry-run"]):
        capsys.readouterr()
        assert main([*command, "--store", store.uri]) == 0, command
    assert main(["registry", "check", "--store", store.uri]) == 1
    assert "not a record file name" in capsys.readouterr().out


def test_compact_brings_both_snapshots_up_to_date_so_the_next_reader_reads_no_record_file(s3_store, tmp_path):
    """What a fleet command does at its end (``Registry.compact``): the next ``fleet status`` reads the two
    snapshots and the listings, not the records and alias entries the command added."""
    from pipeline.registry.fleet import fleet_status
    from pipeline.storage import Store
    from tests.support.counting import CountingStore

    registry = Registry(s3_store)
    core = registry.register("prior")
    for site in ("s1", "s2", "s3"):  # fewer than COMPACT_AFTER: a reader alone would not write a snapshot
        registry.register("encoder", site=site, aligned_to=core.id)
    record_files.compact(registry.store)
    assert len(s3_store.list(layout.SNAPSHOTS)) == len(s3_store.list(layout.ALIAS_SNAPSHOTS)) == 1
    counting = CountingStore(s3_store)
    fleet = fleet_status(Registry(counting))
    assert [s.encoder is not None for s in fleet.sites] == [True] * 3
    assert counting.requests == {"list": 4, "read": 2}  # records, snapshots, aliases, alias snapshots; 2 snapshots
    record_files.compact(registry.store)  # nothing new: nothing written
    assert len(s3_store.list(layout.SNAPSHOTS)) == len(s3_store.list(layout.ALIAS_SNAPSHOTS)) == 1

    local = Registry(Store.open(str(tmp_path / "local")))
    local.register("prior")
    record_files.compact(local.store)
    assert local.store.list(layout.SNAPSHOTS) == []  # a local listing cannot vouch for a snapshot's rows
