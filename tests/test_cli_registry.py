"""``flowprior registry ...`` through the real command line, on both backends."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.formatting import size
from pipeline.registry import Record, Registry
from pipeline.storage import Store
from tests.support.fleet import adapter_pair, build_fleet

REQUIRED = {"id", "kind", "site", "parents", "created_at", "config", "metrics", "artifact", "hash", "fingerprint"}


def flowprior(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def query(store_uri: str, *args: str) -> list[dict]:
    result = flowprior("registry", *args, "--json", "--store", store_uri)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert all(REQUIRED <= set(r) for r in records)
    return records


def show(store_uri: str, record_id: str) -> dict:
    result = flowprior("registry", "show", record_id, "--json", "--store", store_uri)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert REQUIRED <= set(record)
    return record


@pytest.mark.slow
def test_registry_queries_answer_from_the_cli(store_uri):
    fleet = build_fleet(Registry(Store.open(store_uri)))
    ids = lambda records: [r["id"] for r in records]  # noqa: E731
    assert ids(query(store_uri, "ls")) == [r.id for r in fleet.values()]
    assert ids(query(store_uri, "ls", "--kind", "encoder", "--site", "s3")) == [fleet["e3_old"].id, fleet["e3"].id]
    assert show(store_uri, fleet["s1"].id)["id"] == fleet["s1"].id
    assert ids(query(store_uri, "lineage", fleet["e1"].id)) == [fleet[k].id for k in ("e1", "s1", "core1")]
    assert ids(query(store_uri, "aligned", "s1")) == [fleet["s1"].id]
    assert {r["site"] for r in query(store_uri, "stale")} == {"s1", "s2"}
    assert query(store_uri, "stale", "--prior", fleet["core1"].id) == []

    table = flowprior("registry", "stale", "--store", store_uri)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["id", "kind", "site"]
    assert fleet["e2"].id in table.stdout and f"aligned_to={fleet['core1'].id}" in table.stdout
    registry = Registry(Store.open(store_uri))
    registry.register("site-check", site="s4", parents=[fleet["core2"].id], config={"decision": "reuse"})
    none = flowprior("registry", "aligned", "s4", "--store", store_uri)  # a known site, no encoder yet
    assert none.returncode == 0 and "site s4 has no current encoder" in none.stdout
    typo = flowprior("registry", "aligned", "s9", "--store", store_uri)  # no such site
    assert typo.returncode == 2 and "no site s9 in the registry" in typo.stderr


def test_lineage_and_ls_show_each_artifacts_size_and_how_a_site_prior_holds_it(tmp_path, capsys):
    store = Store.open(str(tmp_path / "st"))
    pair = adapter_pair(Registry(store), tmp_path)
    core, adapter = pair["core"], pair["adapter"]
    old = Record.new("site-prior", site="s8", parents=[core.id], artifact=core.artifact, hash=core.hash)
    store.create(f"registry/records/{old.id}.json", old.to_json())  # written before sizes and methods were kept
    assert main(["registry", "lineage", adapter.id, "--store", store.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[5] == "artifact"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert f"{adapter.hash[:12]} 150.2 kB adapter" in rows[adapter.id]
    assert f"{core.hash[:12]} 1.33 MB " in rows[core.id] and not {"adapter", "full"} & set(rows[core.id].split())
    assert main(["registry", "ls", "--kind", "site-prior", "--store", store.uri]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert f"{core.hash[:12]} n/a full" in rows[old.id] and "150.2 kB adapter" in rows[adapter.id]
    assert main(["registry", "ls", "--json", "--store", store.uri]) == 0
    configs = {r["id"]: r["config"] for r in json.loads(capsys.readouterr().out)}
    assert (configs[adapter.id]["method"], configs[adapter.id]["artifact_bytes"]) == ("adapter", 150_200)
    assert configs[adapter.id]["core"] == {"id": core.id, "hash": core.hash} and "artifact_bytes" not in configs[old.id]


@pytest.mark.parametrize("value, said", [(0, "0 B"), (999, "999 B"), (1000, "1.00 kB"), (150_200, "150.2 kB"),
                                         (999_960, "1.00 MB"), (1_330_000, "1.33 MB"), (None, "n/a"), (True, "n/a")])
def test_sizes_read_in_decimal_units_with_three_or_four_figures(value, said):
    assert size(value) == said


def test_the_store_comes_from_the_environment_when_the_flag_is_absent(tmp_path):
    Registry(Store.open(str(tmp_path / "st"))).register("prior")
    result = flowprior("registry", "ls", "--json", env={"FLOWPRIOR_STORE": str(tmp_path / "st")})
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 1


@pytest.mark.parametrize("args, message", [
    (["registry", "show", "prior-404"], "no record 'prior-404'"),
    (["registry", "aligned", "../etc"], "invalid site id '../etc'"),
    (["registry", "lineage", "a/b"], "invalid record id 'a/b'"),
    (["registry", "ls", "--kind", "model"], "invalid choice: 'model'"),
    (["registry", "ls", "--where", "created_after=monday"], "not an ISO 8601 time"),
    (["registry", "alias", "set", "core", "prior-404"], "no record 'prior-404'"),
    (["registry", "alias", "history", "../core"], "invalid alias"),
    (["registry", "gc", "--keep-days", "-1"], "expected a number of days >= 0"),
    (["prior", "fit", "f.parquet", "--tag", "team"], "expected key=value"),
    (["site", "align", "s.yaml", "--tag", "secret_key=x"], "credentials never go into the registry"),
])
def test_bad_queries_fail_clearly(tmp_path, args, message):
    Registry(Store.open(str(tmp_path / "st"))).register("prior")
    result = flowprior(*args, "--store", str(tmp_path / "st"))
    assert result.returncode == 2 and message in result.stderr


def test_a_missing_local_store_and_a_dead_s3_server_are_clear_errors(tmp_path):
    result = flowprior("registry", "ls", "--store", str(tmp_path / "typo"))
    assert result.returncode == 2 and f"no flowprior store at {tmp_path / 'typo'}" in result.stderr
    assert not (tmp_path / "typo").exists()
    dead = flowprior("registry", "ls", "--store", "s3://bucket/p", "--s3-endpoint", "http://127.0.0.1:9",
                     env={"AWS_ACCESS_KEY_ID": "AKIAFLOWPRIOR", "AWS_SECRET_ACCESS_KEY": "never-print-me-please",
                          "FLOWPRIOR_S3_RETRIES": "1"})
    assert dead.returncode == 1 and "store s3://bucket/p: cannot list registry/records" in dead.stderr
    assert "never-print-me-please" not in dead.stderr + dead.stdout


def test_help_explains_the_queries():
    result = flowprior("registry", "--help")
    assert result.returncode == 0
    for word in ("ls", "show", "lineage", "aligned", "stale", "--json"):
        assert word in result.stdout
    assert "FLOWPRIOR_STORE" in flowprior("registry", "ls", "--help").stdout


@pytest.mark.slow
def test_fleet_status_aliases_and_tags_from_the_cli(store_uri):
    registry = Registry(Store.open(store_uri))
    fleet = build_fleet(registry)
    tagged = registry.register("site-check", site="s2", parents=[fleet["core2"].id], config={"decision": "reuse"},
                               metrics={"probe_gain": 0.01, "fm_ratio": 1.02, "nll_gap": 0.1, "mmd": 0.01},
                               tags={"team": "ops"})
    status = json.loads(flowprior("fleet", "status", "--json", "--store", store_uri).stdout)
    assert status["core"] == fleet["core2"].id and status["stale"] == ["s1", "s2"]
    assert [(s["site"], s["decision"]) for s in status["sites"]] == [("s1", None), ("s2", "reuse"), ("s3", None)]
    table = flowprior("fleet", "status", "--store", store_uri)
    assert table.returncode == 0 and "3 site(s), 2 stale" in table.stdout
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert "STALE" in rows["s1"] and "reuse" in rows["s2"] and "the current core" in rows["s3"]
    assert [r["id"] for r in query(store_uri, "ls", "--where", "team=ops")] == [tagged.id]

    # roll the core back with a reason: stale follows, the history says why
    moved = flowprior("registry", "alias", "set", "core", fleet["core1"].id, "--reason", "roll back v2",
                      "--expect", fleet["core2"].id, "--json", "--store", store_uri)
    assert moved.returncode == 0 and json.loads(moved.stdout)[0]["reason"] == "roll back v2"
    assert query(store_uri, "stale") == []
    history = json.loads(flowprior("registry", "alias", "history", "core", "--json", "--store", store_uri).stdout)
    assert [(m["target"], m["reason"]) for m in history] == [
        (fleet["core1"].id, None), (fleet["core2"].id, None), (fleet["core1"].id, "roll back v2")]
    lost = flowprior("registry", "alias", "set", "core", fleet["core2"].id, "--expect", fleet["core2"].id,
                     "--store", store_uri)
    assert lost.returncode == 2 and "it was not moved" in lost.stderr
    listed = flowprior("registry", "alias", "ls", "--store", store_uri)
    assert listed.returncode == 0 and "roll back v2" in listed.stdout and "encoder.s3" in listed.stdout


def test_gc_from_the_cli_previews_then_deletes(tmp_path):
    store = Store.open(str(tmp_path / "st"))
    kept = Registry(store).register("prior")
    store.create("artifacts/" + "f" * 64 + ".bin", b"orphan" * 1000)
    preview = flowprior("registry", "gc", "--keep-days", "0", "--dry-run", "--json", "--store", store.uri)
    found = json.loads(preview.stdout)
    assert preview.returncode == 0 and [d["key"] for d in found["doomed"]] == ["artifacts/" + "f" * 64 + ".bin"]
    assert found["bytes"] == 6000 and found["deleted"] == [] and store.list("artifacts") == ["f" * 64 + ".bin"]
    done = flowprior("registry", "gc", "--keep-days", "0", "--store", store.uri)
    assert done.returncode == 0 and "deleted 1 item(s), 0.01 MiB" in done.stdout
    assert store.list("artifacts") == [] and [r.id for r in Registry(store).records()] == [kept.id]
