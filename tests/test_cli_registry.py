"""``flowprior registry ...`` through the real command line, on both backends."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.registry import Registry
from pipeline.storage import Store
from tests.registry.test_registry import build_fleet

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


def test_registry_queries_answer_from_the_cli(store_uri):
    fleet = build_fleet(Registry(Store.open(store_uri)))
    ids = lambda records: [r["id"] for r in records]  # noqa: E731
    assert ids(query(store_uri, "ls")) == [r.id for r in fleet.values()]
    assert ids(query(store_uri, "ls", "--kind", "encoder", "--site", "s3")) == [fleet["e3_old"].id, fleet["e3"].id]
    assert ids(query(store_uri, "show", fleet["s1"].id)) == [fleet["s1"].id]
    assert ids(query(store_uri, "lineage", fleet["e1"].id)) == [fleet[k].id for k in ("e1", "s1", "core1")]
    assert ids(query(store_uri, "aligned", "s1")) == [fleet["s1"].id]
    assert {r["site"] for r in query(store_uri, "stale")} == {"s1", "s2"}
    assert query(store_uri, "stale", "--prior", fleet["core1"].id) == []

    table = flowprior("registry", "stale", "--store", store_uri)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["id", "kind", "site"]
    assert fleet["e2"].id in table.stdout and f"aligned_to={fleet['core1'].id}" in table.stdout
    none = flowprior("registry", "aligned", "s9", "--store", store_uri)
    assert none.returncode == 0 and "site s9 has no current encoder" in none.stdout


def test_the_store_comes_from_the_environment_when_the_flag_is_absent(tmp_path):
    Registry(Store.open(str(tmp_path / "st"))).register("prior")
    result = flowprior("registry", "ls", "--json", env={"FLOWPRIOR_STORE": str(tmp_path / "st")})
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 1


@pytest.mark.parametrize("args, message", [
    (["registry", "show", "prior-404"], "no record 'prior-404'"),
    (["registry", "aligned", "../etc"], "invalid site id '../etc'"),
    (["registry", "lineage", "a/b"], "invalid record id 'a/b'"),
    (["registry", "ls", "--kind", "model"], "invalid choice: 'model'"),
])
def test_bad_queries_fail_clearly(tmp_path, args, message):
    Registry(Store.open(str(tmp_path / "st"))).register("prior")
    result = flowprior(*args, "--store", str(tmp_path / "st"))
    assert result.returncode == 2 and message in result.stderr


def test_a_missing_local_store_and_a_dead_s3_server_are_clear_errors(tmp_path):
    result = flowprior("registry", "ls", "--store", str(tmp_path / "typo"))
    assert result.returncode == 2 and f"no store at {tmp_path / 'typo'}" in result.stderr
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
