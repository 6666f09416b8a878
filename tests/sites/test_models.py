"""Models in the registry: a prior published as a record's artifact loads back bit for bit, hash-checked, from
the store it was published to or a copy of it."""

import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.method.configs import FitConfig
from pipeline.method.prior import FlowPrior
from pipeline.registry import CORE_ALIAS, IntegrityError, Registry
from pipeline.sites.models import load_prior, publish_prior


@pytest.fixture(scope="module")
def tiny_prior() -> FlowPrior:
    torch.manual_seed(0)
    return FlowPrior.fit(torch.randn(200, 3), width=8, depth=1, fit=FitConfig(steps=2, warmup=1, log_every=1))


def test_publish_and_load_a_prior_checks_its_hash(store, tiny_prior, tmp_path):
    registry = Registry(store)
    record = publish_prior(registry, tiny_prior, fingerprint="d" * 64, config={"steps": 2}, metrics={"fm": 1.5})
    assert record.artifact == f"artifacts/{record.hash}.safetensors"  # a key: the store can move
    assert registry.get(record.id) == record
    assert registry.alias(CORE_ALIAS) == record.id
    loaded = load_prior(registry, record.id)
    y, t = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(loaded.velocity(y, t), tiny_prior.velocity(y, t))
    # The same bytes published twice share one artifact; the records stay distinct.
    (tmp_path / "a.bin").write_bytes(b"weights")
    first, second = (registry.register("sweep", artifact=tmp_path / "a.bin") for _ in range(2))
    assert first.artifact == second.artifact and first.id != second.id
    assert store.list("artifacts") == sorted([f"{record.hash}.safetensors", f"{first.hash}.bin"])


def test_a_tampered_artifact_is_refused(store, tiny_prior, tmp_path):
    registry = Registry(store)
    record = publish_prior(registry, tiny_prior)
    key = record.artifact
    data = bytearray(store.read(key))
    data[-5] ^= 0x01
    if store.is_local:
        (store.backend.root / key).write_bytes(bytes(data))
    else:  # an attacker with write access overwrites the object
        store.backend.fs.pipe_file(f"{store.backend.root}/{key}", bytes(data))
    with pytest.raises(IntegrityError, match=f"record {record.id}: artifact .* was changed after publishing"):
        load_prior(registry, record.id)
    assert issubclass(IntegrityError, ValueError) and not issubclass(IntegrityError, CheckpointError)


def test_a_copied_store_still_loads_its_priors(tiny_prior, tmp_path):
    import dataclasses
    import shutil

    from pipeline.storage import Store

    registry = Registry(Store.open(str(tmp_path / "old")))
    record = publish_prior(registry, tiny_prior)
    # a record from before artifacts were keys: an absolute URI under the store's old location
    legacy = dataclasses.replace(record, id="prior-legacy", artifact=f"s3://old-bucket/fleet/{record.artifact}")
    registry.store.create("registry/records/prior-legacy.json", legacy.to_json())
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    moved = Registry(Store.open(str(tmp_path / "new")))
    y, t = torch.randn(4, 3), torch.rand(4)
    for rid in (record.id, "prior-legacy"):
        assert torch.equal(load_prior(moved, rid).velocity(y, t), tiny_prior.velocity(y, t))
