"""Models in the registry: a prior or an encoder published as a record's artifact, and loaded back.

The registry deals in files and records; this is where they meet the method library. A model goes out
as a tensor-only checkpoint (its own ``save``), is registered with it (:meth:`Registry.register`), and
comes back hash-checked against the record and loaded without executing code.

    record = publish_prior(registry, prior, fingerprint=features.fingerprint, metrics={...})
    prior = load_prior(registry, record.id)

A site prior trained as an adapter of its core (``prior.adapter``, :mod:`pipeline.method.adapter`) goes out
as the adapter alone: its record's config says ``method: adapter`` and names the ``core`` (its id and
artifact hash, also written in the file); loading fetches both, hash-checks both, refuses an adapter whose
core's record holds another hash, and merges them. A full site prior's record says ``method: full``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from pipeline.errors import RegistryError
from pipeline.method.encoder import Autoencoder, save_encoder
from pipeline.method.encoder import load_encoder as load_encoder_file
from pipeline.method.prior import FlowPrior
from pipeline.registry import Record, Registry
from pipeline.registry.records import prior_method

Model = TypeVar("Model")
PRIOR_KINDS = ("prior", "site-prior")


def publish_prior(registry: Registry, prior: FlowPrior, *, kind: str = "prior", site: str | None = None,
                  **fields: object) -> Record:
    """Save ``prior`` as a tensor-only checkpoint and register it (``fields``: see ``Registry.register``); its
    feature contract (``info["features"]``, see :mod:`pipeline.data.schema`) goes into the record's config.
    A site prior with an adapter is saved as the adapter of its first parent, the core (module docstring)."""
    config = dict(fields.pop("config", None) or {})
    if "features" in prior.info:
        config["features"] = prior.info["features"]
    if kind == "site-prior":
        config["method"] = "full" if prior.adapter is None else "adapter"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prior.safetensors"
        if prior.adapter is None:
            prior.save(path)
        else:
            parents = list(fields.get("parents") or [])
            if not parents:
                raise RegistryError("a site prior stored as an adapter needs its core as its first parent")
            core = registry.get(parents[0])
            config["core"] = {"id": core.id, "hash": core.hash}
            config["adapter"] = prior.adapter.config.to_dict()
            prior.save_adapter(path, {"id": core.id, "sha256": core.hash})
        return registry.register(kind, site=site, artifact=path, config=config, **fields)


def publish_encoder(registry: Registry, model: Autoencoder, info: dict, **fields: object) -> Record:
    """Save a site's encoder (with ``info`` in its header) and register it as an ``encoder`` record."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_encoder(model, Path(tmp) / "encoder.safetensors", info)
        return registry.register("encoder", artifact=path, **fields)


def load_prior(registry: Registry, record_id: str) -> FlowPrior:
    """The prior of a ``prior``/``site-prior`` record, hash-checked, loaded without executing code (an adapter
    site prior: with its core, merged; see the module docstring)."""
    record = registry.get(record_id)
    core = record.config.get("core") if prior_method(record) == "adapter" else None
    if core is None:
        return _load(registry, record, PRIOR_KINDS, "a prior", FlowPrior.load)
    core_record = registry.get(core["id"])
    if core_record.hash != core["hash"]:
        raise RegistryError(f"site prior {record.id} is an adapter of core {core['id']} with artifact hash "
                            f"{core['hash']}, but that record's artifact hash is {core_record.hash}: refusing to "
                            "compose them (`flowprior registry check` verifies every pair)")
    base = load_prior(registry, core["id"])
    return _load(registry, record, PRIOR_KINDS, "a prior",
                 lambda path, expected_sha256: FlowPrior.load_adapter(path, base, core["hash"], expected_sha256))


def load_encoder(registry: Registry, record_id: str) -> Autoencoder:
    """The autoencoder of an ``encoder`` record (a site's, aligned to ``record.aligned_to``), hash-checked,
    loaded without executing code."""
    return _load(registry, registry.get(record_id), ("encoder",), "an encoder", load_encoder_file)


def _load(registry: Registry, record: Record, kinds: tuple[str, ...], what: str,
          load: Callable[..., Model]) -> Model:
    if record.kind not in kinds:
        raise RegistryError(f"record {record.id} is a {record.kind}, not {what}")
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.fetch_artifact(record, Path(tmp) / "artifact.safetensors")
        return load(path, expected_sha256=record.hash)
