"""Models in the registry: a prior or an encoder published as a record's artifact, and loaded back.

The registry deals in files and records; this is where they meet the method library. A model goes out
as a tensor-only checkpoint (its own ``save``), is registered with it (:meth:`Registry.register`), and
comes back hash-checked against the record and loaded without executing code.

    record = publish_prior(registry, prior, fingerprint=features.fingerprint, metrics={...})
    prior = load_prior(registry, record.id)
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

Model = TypeVar("Model")


def publish_prior(registry: Registry, prior: FlowPrior, *, kind: str = "prior", site: str | None = None,
                  **fields: object) -> Record:
    """Save ``prior`` as a tensor-only checkpoint and register it (``fields``: see ``Registry.register``); its
    feature contract (``info["features"]``, see :mod:`pipeline.data.schema`) goes into the record's config."""
    if "features" in prior.info:
        fields["config"] = {**(fields.get("config") or {}), "features": prior.info["features"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prior.safetensors"
        prior.save(path)
        return registry.register(kind, site=site, artifact=path, **fields)


def publish_encoder(registry: Registry, model: Autoencoder, info: dict, **fields: object) -> Record:
    """Save a site's encoder (with ``info`` in its header) and register it as an ``encoder`` record."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_encoder(model, Path(tmp) / "encoder.safetensors", info)
        return registry.register("encoder", artifact=path, **fields)


def load_prior(registry: Registry, record_id: str) -> FlowPrior:
    """The prior of a ``prior``/``site-prior`` record, hash-checked, loaded without executing code."""
    return _load(registry, record_id, ("prior", "site-prior"), "a prior", FlowPrior.load)


def load_encoder(registry: Registry, record_id: str) -> Autoencoder:
    """The autoencoder of an ``encoder`` record (a site's, aligned to ``record.aligned_to``), hash-checked,
    loaded without executing code."""
    return _load(registry, record_id, ("encoder",), "an encoder", load_encoder_file)


def _load(registry: Registry, record_id: str, kinds: tuple[str, ...], what: str,
          load: Callable[..., Model]) -> Model:
    record = registry.get(record_id)
    if record.kind not in kinds:
        raise RegistryError(f"record {record_id} is a {record.kind}, not {what}")
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.fetch_artifact(record, Path(tmp) / "artifact.safetensors")
        return load(path, expected_sha256=record.hash)
