"""Tags on records and the ``--where`` filters over them."""

import json

import pytest

from pipeline.errors import RegistryError
from pipeline.registry import Record, Registry
from pipeline.registry.query import Where, select
from pipeline.registry.records import parse_tag


def test_tags_are_kept_checked_and_never_hold_credentials(store, monkeypatch):
    registry = Registry(store)
    record = registry.register("prior", tags={"team": "ops", "ticket": "FP-12"})
    assert registry.get(record.id).tags == {"team": "ops", "ticket": "FP-12"}
    for bad, message in [({"1team": "x"}, "tag key '1team'"), ({"team": "a\nb"}, "printable text"),
                         ({"team": "x" * 257}, "at most 256"), ({"api_token": "x"}, "credentials never go")]:
        with pytest.raises(RegistryError, match=message):
            registry.register("prior", tags=bad)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    with pytest.raises(RegistryError, match="contains a credential"):
        registry.register("prior", tags={"note": "key s3cr3t-value-123"})
    assert [r.id for r in registry.records()] == [record.id]  # nothing refused was written
    assert parse_tag(" team = ops ") == ("team", "ops") and parse_tag("url=a=b") == ("url", "a=b")
    with pytest.raises(RegistryError, match="expected key=value"):
        parse_tag("team")


def test_untagged_records_are_written_as_before_tags_existed():
    record = Record.new("prior")
    assert "tags" not in json.loads(record.to_json())  # so older readers, which refuse unknown fields, read it
    assert Record.from_json(record.to_json()) == record and record.tags == {}
    tagged = Record.new("prior", tags={"team": "ops"})
    assert Record.from_json(tagged.to_json()).tags == {"team": "ops"}


def test_where_filters_by_field_tag_and_time(store):
    registry = Registry(store)
    core = registry.register("prior", tags={"team": "ops"})
    a = registry.register("encoder", site="a", aligned_to=core.id, tags={"team": "ml", "kind": "nightly"})
    b = registry.register("encoder", site="b", aligned_to=core.id, parents=[core.id], tags={"team": "ops"})
    records = registry.records()
    ids = lambda *where: [r.id for r in select(records, [Where.parse(w) for w in where])]  # noqa: E731
    assert ids("team=ops") == [core.id, b.id]
    assert ids("kind=encoder", "team=ops") == [b.id]  # different keys: all hold
    assert ids("site=a", "site=b") == [a.id, b.id]  # one key twice: either
    assert ids("tag.kind=nightly") == [a.id] and ids("kind=nightly") == []  # tag.<key> for a tag named like a field
    assert ids(f"parent={core.id}") == [b.id] and ids(f"aligned_to={core.id}") == [a.id, b.id]
    assert ids(f"created_after={a.created_at}") == [b.id]
    assert ids(f"created_before={a.created_at}") == [core.id]
    assert ids("created_after=2000-01-01", "created_before=2000-01-02") == []
    for bad, message in [("team", "expected key=value"), ("created_after=yesterday", "not an ISO 8601 time"),
                         ("9x=1", "not a field")]:
        with pytest.raises(RegistryError, match=message):
            Where.parse(bad)


def test_flowpriors_own_tag_keys_are_refused(store):
    registry = Registry(store)
    for key in ("flowprior.id", "flowprior.run", "FlowPrior.kind"):
        with pytest.raises(RegistryError, match=f"refusing tag {key}: keys starting with 'flowprior.'"):
            registry.register("prior", tags={key: "prior-1"})
    with pytest.raises(RegistryError, match="keys starting with 'flowprior.'"):
        parse_tag("flowprior.registered=x")
    assert registry.records() == []


def test_where_on_a_record_field_compares_it_or_says_how(store):
    registry = Registry(store)
    a, b = registry.register("prior"), registry.register("prior")
    assert select(registry.records(), [Where.parse(f"id={b.id}")]) == [b]
    assert select(registry.records(), [Where.parse(f"id={a.id}"), Where.parse(f"id={b.id}")]) == [a, b]
    for key, hint in [("parents", "parent=ID"), ("created_at", "created_after=TIME"), ("metrics", "registry show")]:
        with pytest.raises(RegistryError, match=f"--where {key}=...: {key} is a record field .*{hint}"):
            Where.parse(f"{key}=x")
    assert Where.parse("tag.parents=x").key == "tag.parents"  # a tag named like a field, as documented
