"""Models in the registry: a prior published as a record's artifact loads back bit for bit, hash-checked, from
the store it was published to or a copy of it."""

import pytest
import torch

from pipeline.errors import CheckpointError, RegistryError
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


def test_an_adapter_site_prior_is_stored_alone_and_loads_composed_with_its_core(store, tmp_path):
    from pipeline.method.configs import AdapterConfig
    from pipeline.sites.site_prior import site_fit_config, train_site_prior

    torch.manual_seed(0)
    x = torch.randn(400, 3)
    core = FlowPrior.fit(x, width=32, depth=2, fit=FitConfig(steps=10, warmup=1, log_every=5))
    registry = Registry(store)
    core_record = publish_prior(registry, core)
    z = core.to_prior(x + 0.5)
    fit = site_fit_config(core, "finetune", 10, 1e-2, 64, 5)
    site = train_site_prior(core, z[:300], z[300:], "finetune", fit, adapter=AdapterConfig(rank=2))
    with pytest.raises(RegistryError, match="a site prior stored as an adapter needs its core as its first parent"):
        publish_prior(registry, site, kind="site-prior", site="line-1")
    record = publish_prior(registry, site, kind="site-prior", site="line-1", parents=[core_record.id])
    assert record.config["method"] == "adapter" and record.config["adapter"] == AdapterConfig(rank=2).to_dict()
    assert record.config["core"] == {"id": core_record.id, "hash": core_record.hash}
    assert record.config["artifact_bytes"] < core_record.config["artifact_bytes"] / 4  # the adapter alone
    loaded = load_prior(registry, record.id)
    y, t = torch.randn(8, 3), torch.rand(8)
    assert torch.allclose(loaded.velocity(y, t), site.velocity(y, t), atol=1e-6)
    assert loaded.adapter is not None and not any(p.requires_grad for p in loaded.velocity.parameters())

    # a record naming the core with another hash (a core re-published over, a hand-edited record) is refused
    artifact = tmp_path / "adapter.safetensors"
    artifact.write_bytes(store.read(record.artifact))
    wrong = registry.register("site-prior", site="line-1", parents=[core_record.id], artifact=artifact,
                              config={**record.config, "core": {"id": core_record.id, "hash": "e" * 64}})
    with pytest.raises(RegistryError, match=f"site prior {wrong.id} is an adapter of core {core_record.id} with "
                                            f"artifact hash e{{64}}, but that record's artifact hash is"):
        load_prior(registry, wrong.id)
    # and a full site prior is stored whole, as before
    whole = publish_prior(registry, train_site_prior(core, z[:300], z[300:], "finetune", fit), kind="site-prior",
                          site="line-1", parents=[core_record.id])
    assert whole.config["method"] == "full" and "core" not in whole.config
    assert whole.config["artifact_bytes"] > 4 * record.config["artifact_bytes"]
