import json

import pytest

from pipeline.errors import RegistryError
from pipeline.registry import Record


def test_new_records_have_ids_times_and_typed_links():
    record = Record.new("encoder", site="R80711", parents=["site-prior-1"], aligned_to="site-prior-1",
                        fingerprint="f" * 64, metrics={"mmd": float("nan"), "loss": 0.5})
    assert record.id.startswith("encoder-") and record.created_at.endswith("+00:00")
    assert record.links == [{"type": "parent", "id": "site-prior-1"}, {"type": "aligned_to", "id": "site-prior-1"},
                            {"type": "trained_on", "fingerprint": "f" * 64}]
    assert record.metrics == {"mmd": None, "loss": 0.5}  # JSON has no NaN
    again = Record.from_json(record.to_json())
    assert again == record and again.links == record.links
    assert {"id", "kind", "site", "parents", "created_at", "config", "metrics", "artifact", "hash",
            "fingerprint"} <= set(json.loads(record.to_json()))


@pytest.mark.parametrize("kind, fields, message", [
    ("model", {}, "unknown record kind 'model'"),
    ("encoder", {"site": "s1"}, "needs aligned_to"),
    ("encoder", {"aligned_to": "p"}, "needs a site"),
    ("site-prior", {"site": "s1"}, "needs a parent"),
    ("prior", {"site": "../etc"}, "invalid site id"),
    ("prior", {"parents": ["a/b"]}, "invalid parent id"),
    ("prior", {"artifact": "s3://b/x"}, "artifact and hash go together"),
    ("prior", {"config": {"s3": {"aws_secret_access_key": "x"}}}, r"refusing to record \.config\.s3\.aws_secret"),
    ("prior", {"config": {"aws_access_key_id": "AKIA"}}, r"refusing to record \.config\.aws_access_key_id"),
    ("prior", {"config": {"mlflow": {"Token": "x"}}}, r"refusing to record \.config\.mlflow\.Token"),
    ("prior", {"metrics": {"db_password": 1.0}}, r"refusing to record \.metrics\.db_password"),
])
def test_invalid_records_are_refused(kind, fields, message):
    error = ValueError if "invalid" in message else RegistryError
    with pytest.raises(error, match=message):
        Record.new(kind, **fields)


def test_live_credentials_never_reach_a_record(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example-secret")
    with pytest.raises(RegistryError, match=r"\.config\.store: it contains a credential") as info:
        Record.new("prior", config={"store": "s3://bucket?key=wJalrXUtnFEMI-example-secret"})
    assert "wJalrXUtnFEMI" not in str(info.value)


def test_malformed_record_files_are_named():
    with pytest.raises(RegistryError, match="registry/records/x.json: not a valid record"):
        Record.from_json(b"{not json", "registry/records/x.json")
