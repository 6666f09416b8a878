"""Property-based: every name, record file, alias entry, store URI and spec either loads or raises the
project's own error, never another exception (hypothesis generates the inputs)."""

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import RegistryError, SpecError
from pipeline.registry import Record
from pipeline.registry.aliases import parse as parse_alias
from pipeline.sites.spec import load_site_spec
from pipeline.storage import Store, check_key, validate_name
from pipeline.sweeps import load_sweep_spec

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=4), max_leaves=12)
FIELDS = ("id", "kind", "site", "parents", "created_at", "config", "metrics", "artifact", "hash", "fingerprint",
          "aligned_to", "name", "links")


@SETTINGS
@given(st.text(max_size=140) | st.binary(max_size=20) | st.integers() | st.none())
def test_names_are_valid_or_refused(value):
    try:
        name = validate_name(value)
    except ValueError as error:
        assert "invalid name" in str(error)
        return
    assert "/" not in name and ".." not in name and name[0].isalnum() and len(name) <= 128


@SETTINGS
@given(st.text(max_size=60))
def test_store_keys_are_safe_or_refused(key):
    try:
        check_key(key)
    except ValueError:
        return
    assert not key.startswith("/") and all(part not in ("", ".", "..") for part in key.split("/"))


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_record_or_a_registry_error(data):
    try:
        Record.from_json(data, "r.json")
    except RegistryError as error:
        assert str(error).startswith("r.json: ")


@SETTINGS
@given(st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS}),
       st.sampled_from(["prior", "site-prior", "encoder", "sweep", "site-check"]))
def test_any_json_object_is_a_record_or_a_registry_error(raw, kind):
    base = json.loads(Record.new("prior").to_json())
    raw = {**base, "kind": kind, **raw}
    try:
        record = Record.from_json(json.dumps(raw).encode(), "r.json", expected_id=base["id"])
    except RegistryError:
        return
    assert Record.from_json(record.to_json(), "again.json") == record  # what loads also round-trips


@SETTINGS
@given(st.binary(max_size=120) | st.dictionaries(st.sampled_from(["alias", "version", "target", "previous",
                                                                   "moved_at", "extra"]), json_values).map(
    lambda d: json.dumps(d).encode()))
def test_any_alias_entry_is_a_move_or_a_registry_error(data):
    try:
        move = parse_alias(data, "a.json", "core", 3)
    except RegistryError:
        return
    assert move.alias == "core" and move.version == 3


@SETTINGS
@given(st.text(max_size=80))
def test_any_store_uri_opens_or_is_refused_without_secrets(uri):
    try:
        Store.open(uri or "x")
    except ValueError as error:
        assert "@" not in uri or uri.split("@")[0] not in str(error) or "://" not in uri.split("@")[0]


SPEC_KEYS = ("site", "columns", "target", "observations", "encoder", "alignment", "finetune", "thresholds", "seed",
             "bogus")
SECTION_KEYS = ("uri", "filters", "lambda", "steps", "lr", "widths", "latent_dim", "finetune_gain", "refit_fm",
                "heldout_fraction", "draws", "log_every")


@SETTINGS
@given(st.dictionaries(st.sampled_from(SPEC_KEYS),
                       json_values | st.dictionaries(st.sampled_from(SECTION_KEYS), json_values, max_size=5),
                       max_size=8))
def test_any_site_spec_loads_or_is_a_spec_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("spec") / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_site_spec(path)
    except SpecError as error:
        assert str(path) in str(error)


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_a_spec_loads_or_is_a_spec_error(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("spec")
    for name, load in (("site.yaml", load_site_spec), ("sweep.yaml", load_sweep_spec)):
        (folder / name).write_text(text)
        try:
            load(folder / name)
        except SpecError as error:
            assert str(folder / name) in str(error)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["name", "sites", "space", "steps", "epoch_steps", "samples", "scheduler",
                                        "resources", "select", "max_concurrent"]),
                       json_values | st.dictionaries(st.sampled_from(["lambda", "lr", "draws", "type", "grid",
                                                                      "cpu", "gpu", "metric", "reduction_factor"]),
                                                     json_values, max_size=4), max_size=6))
def test_any_sweep_spec_loads_or_is_a_spec_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("sweep")
    Path(folder / "a.yaml").write_text(yaml.safe_dump({"site": "a", "target": {"uri": "t.parquet"},
                                                       "observations": {"uri": "o.parquet"}}))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_sweep_spec(path)
    except SpecError as error:
        assert str(path) in str(error)


def test_the_generators_reach_the_happy_path():
    """Guard against properties that only ever see refusals."""
    assert validate_name("R80711") == "R80711"
    record = Record.new("prior")
    assert Record.from_json(record.to_json(), "r.json", record.id) == record
    with pytest.raises(RegistryError):
        Record.from_json(b"null", "r.json")
