"""One-call questions and writes on the registry, from Python (the CLI is a thin layer over this).

    registry = Registry(Store.open("s3://bucket/flowprior"))
    core = registry.publish_prior(prior, fingerprint=features.fingerprint, metrics=...)
    registry.aligned("R80711")     # the prior R80711's current encoder is aligned to
    registry.stale()               # encoders aligned to anything but the current core prior's family
    registry.lineage(encoder_id)   # the encoder, its prior, that prior's parents, ... back to data
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyarrow as pa

from pipeline.hashing import file_sha256
from pipeline.registry import aliases, snapshots
from pipeline.registry.aliases import AliasMove
from pipeline.registry.records import Record, RegistryError
from pipeline.storage import AlreadyExists, Store, validate_name
from pipeline.storage.store import Progress

if TYPE_CHECKING:
    from pipeline.method.prior import FlowPrior

RECORDS = "registry/records"
ARTIFACTS = "artifacts"
CORE_ALIAS = "core"


class IntegrityError(RegistryError):
    """An artifact whose bytes do not match the hash its record holds (tampered or corrupted)."""


def current_alias(kind: str, site: str | None) -> str | None:
    """The alias a new record of ``kind`` becomes current under: the core prior, or a site's latest."""
    if kind == "prior":
        return CORE_ALIAS
    if kind in ("site-prior", "site-check", "encoder") and site:
        return f"{kind}.{site}"
    return None


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- writing -------------------------------------------------------------------------------
    def register(
        self,
        kind: str,
        *,
        site: str | None = None,
        parents: Iterable[str] = (),
        aligned_to: str | None = None,
        config: dict | None = None,
        metrics: dict | None = None,
        fingerprint: str | None = None,
        artifact: str | os.PathLike | None = None,
        name: str | None = None,
        make_current: bool = True,
        progress: Progress | None = None,
    ) -> Record:
        """Publish ``artifact`` (a local file) and then an immutable record pointing at it.

        Order makes a crash harmless: the artifact is published under its content hash first
        (complete or invisible), then the record (complete or invisible), then the alias move.
        With ``make_current`` a prior becomes the fleet's current core prior, a site prior or
        encoder its site's current one.
        """
        parents = list(parents)
        uri = digest = key = None
        if artifact is not None:
            path = Path(artifact)
            if not path.is_file():
                raise RegistryError(f"artifact {path}: no such file")
            digest = file_sha256(path)
            key = f"{ARTIFACTS}/{digest}{''.join(path.suffixes[-1:])}"
            uri = self.store.uri_of(key)
        fields = dict(site=site, parents=parents, aligned_to=aligned_to, config=config or {}, metrics=metrics or {},
                      fingerprint=fingerprint, artifact=uri, hash=digest, name=name)
        record = Record.new(kind, **fields)
        for ref in [*parents, *([aligned_to] if aligned_to else [])]:
            self.get(ref)  # refuse links to records that do not exist
        if key is not None:
            try:
                self.store.put_file(key, path, progress)
            except AlreadyExists:
                pass  # the same bytes are already published (keys are content hashes)
        while True:
            try:
                self.store.create(f"{RECORDS}/{record.id}.json", record.to_json())
                break
            except AlreadyExists:  # an id collision (same second, same 32 random bits): draw again
                record = Record.new(kind, **fields)
        alias = current_alias(kind, site)
        if make_current and alias:
            aliases.move(self.store, alias, record.id)
        return record

    def publish_prior(self, prior: "FlowPrior", *, kind: str = "prior", site: str | None = None,
                      **fields: object) -> Record:
        """Save ``prior`` as a tensor-only checkpoint and register it (see ``register``)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prior.safetensors"
            prior.save(path)
            return self.register(kind, site=site, artifact=path, **fields)

    def move_alias(self, alias: str, record_id: str) -> AliasMove:
        self.get(record_id)
        return aliases.move(self.store, alias, record_id)

    # -- reading -------------------------------------------------------------------------------
    def get(self, record_id: str) -> Record:
        validate_name(record_id, "record id")
        key = f"{RECORDS}/{record_id}.json"
        try:
            return Record.from_json(self.store.read(key), self.store.uri_of(key))
        except FileNotFoundError:
            raise RegistryError(f"no record {record_id!r} in the registry at {self.store.uri}") from None

    def records(self, kind: str | None = None, site: str | None = None) -> list[Record]:
        """All records (oldest first), optionally of one kind and/or one site."""
        ids = [n[: -len(".json")] for n in self.store.list(RECORDS) if n.endswith(".json")]
        cached = snapshots.read_latest(self.store)
        missing = [i for i in ids if i not in cached]
        fetched = dict(zip(missing, self.store.read_many([f"{RECORDS}/{i}.json" for i in missing])))
        raw = {i: cached[i] if i in cached else fetched[i] for i in ids}  # the listing is the truth
        if len(missing) >= snapshots.COMPACT_AFTER:
            snapshots.write(self.store, raw)
        records = [Record.from_json(data, self.store.uri_of(f"{RECORDS}/{i}.json")) for i, data in raw.items()]
        records = [r for r in records if (kind is None or r.kind == kind) and (site is None or r.site == site)]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def table(self, kind: str | None = None, site: str | None = None) -> pa.Table:
        """The records as one pyarrow table (config and metrics as JSON text)."""
        rows = [{**{k: getattr(r, k) for k in ("id", "kind", "site", "parents", "aligned_to", "artifact", "hash",
                                                "fingerprint", "name")},
                 "created_at": r.created_at, "config": json.dumps(r.config, sort_keys=True, default=str),
                 "metrics": json.dumps(r.metrics, sort_keys=True)} for r in self.records(kind, site)]
        schema = pa.schema([("id", pa.string()), ("kind", pa.string()), ("site", pa.string()),
                            ("parents", pa.list_(pa.string())), ("aligned_to", pa.string()),
                            ("artifact", pa.string()), ("hash", pa.string()), ("fingerprint", pa.string()),
                            ("name", pa.string()), ("created_at", pa.string()), ("config", pa.string()),
                            ("metrics", pa.string())])
        table = pa.Table.from_pylist(rows, schema=schema)
        return table.set_column(table.schema.get_field_index("created_at"), "created_at",
                                table["created_at"].cast(pa.timestamp("us", tz="UTC")))

    def alias(self, alias: str) -> str | None:
        move = aliases.latest(self.store, alias)
        return move.target if move else None

    def alias_history(self, alias: str) -> list[AliasMove]:
        return aliases.history(self.store, alias)

    def fetch_artifact(self, record: Record, path: str | os.PathLike) -> Path:
        """Download ``record``'s artifact to ``path`` and check its hash; refuse a mismatch."""
        if record.artifact is None:
            raise RegistryError(f"record {record.id} has no artifact")
        path = Path(path)
        key = self.store.key_of(record.artifact)
        if key is None:
            raise RegistryError(f"record {record.id}: artifact {record.artifact} is outside the store {self.store.uri}")
        try:
            self.store.get_file(key, path)
        except FileNotFoundError:
            raise IntegrityError(f"record {record.id}: artifact {record.artifact} is missing") from None
        found = file_sha256(path)
        if found != record.hash:
            path.unlink()
            raise IntegrityError(f"record {record.id}: artifact {record.artifact} has SHA-256 {found[:12]}... but the "
                                 f"registry recorded {record.hash[:12]}...; it was changed after publishing, refusing it")
        return path

    def load_prior(self, record_id: str) -> "FlowPrior":
        """The prior of a ``prior``/``site-prior`` record, hash-checked, loaded without executing code."""
        from pipeline.method.prior import FlowPrior

        record = self.get(record_id)
        if record.kind not in ("prior", "site-prior"):
            raise RegistryError(f"record {record_id} is a {record.kind}, not a prior")
        with tempfile.TemporaryDirectory() as tmp:
            path = self.fetch_artifact(record, Path(tmp) / "prior.safetensors")
            return FlowPrior.load(path, expected_sha256=record.hash)

    # -- questions -----------------------------------------------------------------------------
    def lineage(self, record_id: str) -> list[Record]:
        """The record and everything it derives from (parents and aligned_to), nearest first."""
        seen: dict[str, Record] = {}
        queue = [record_id]
        while queue:
            rid = queue.pop(0)
            if rid in seen:
                continue
            record = seen[rid] = self.get(rid)
            queue.extend([*record.parents, *([record.aligned_to] if record.aligned_to else [])])
        return list(seen.values())

    def aligned(self, site: str) -> Record | None:
        """The prior that ``site``'s current encoder is aligned to (None if it has no encoder)."""
        encoder_id = self.alias(current_alias("encoder", validate_name(site, "site id")))
        return self.get(self.get(encoder_id).aligned_to) if encoder_id else None

    def stale(self, prior: str | None = None) -> list[Record]:
        """Current site encoders aligned to neither ``prior`` (default: the current core prior) nor
        any record derived from it (its site priors, their fine-tunes, ...)."""
        prior = prior or self.alias(CORE_ALIAS)
        if prior is None:
            raise RegistryError("no current core prior in the registry; name one with --prior")
        self.get(prior)
        records = self.records()
        family, grew = {prior}, True
        while grew:  # everything with a parent in the family joins it
            grown = family | {r.id for r in records if family.intersection(r.parents)}
            grew, family = grown != family, grown
        by_id = {r.id: r for r in records}
        prefix = "encoder."
        current = [self.alias(a) for a in aliases.names(self.store) if a.startswith(prefix)]
        return [by_id[e] for e in current if e in by_id and by_id[e].aligned_to not in family]
