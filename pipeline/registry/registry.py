"""One-call questions and writes on the registry, from Python (the CLI is a thin layer over this).

    registry = Registry(Store.open("s3://bucket/flowprior"))
    core = registry.publish_prior(prior, fingerprint=features.fingerprint, metrics=...)
    registry.aligned("R80711")     # the prior R80711's current encoder is aligned to
    registry.stale()               # encoders aligned to anything but the current core prior's family
    registry.lineage(encoder_id)   # the encoder, its prior, that prior's parents, ... back to data
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyarrow as pa

from pipeline.errors import RegistryError
from pipeline.hashing import file_sha256
from pipeline.registry import aliases, retention, snapshots
from pipeline.registry.aliases import AliasMove
from pipeline.registry.layout import ARTIFACTS, RECORDS, record_id_of
from pipeline.registry.records import KINDS, Record
from pipeline.storage import AlreadyExists, Store, validate_name
from pipeline.storage.store import ObjectInfo, Progress, check_key

if TYPE_CHECKING:
    from pipeline.method.encoder import Autoencoder
    from pipeline.method.prior import FlowPrior

CORE_ALIAS = "core"

log = logging.getLogger(__name__)


class IntegrityError(RegistryError):
    """An artifact whose bytes do not match the hash its record holds (tampered or corrupted)."""


class MissingRecord(RegistryError):
    """No record of that id."""


def current_alias(kind: str, site: str | None) -> str | None:
    """The alias a new record of ``kind`` becomes current under: the core prior, or a site's latest."""
    if kind == "prior":
        return CORE_ALIAS
    if kind in ("site-prior", "site-check", "encoder") and site:
        return f"{kind}.{site}"
    return None


def named_id(kind: str, name: str) -> str:
    """The record id of the run ``name`` of ``kind``: fixed by the name, so a run registers exactly once
    (a second writer of the same name meets the first's record instead of adding its own)."""
    validate_name(name, "run name")
    return f"{kind}-{hashlib.sha256(f'{kind}/{name}'.encode()).hexdigest()[:24]}"


def settings_digest(settings: dict) -> str:
    """What makes two runs of one name the same run: a digest of their settings (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        settings: dict | None = None,
        tags: dict[str, str] | None = None,
        make_current: bool = True,
        progress: Progress | None = None,
    ) -> Record:
        """Publish ``artifact`` (a local file) and then an immutable record pointing at it.

        Order makes a crash harmless: the artifact is published under its content hash first
        (complete or invisible), then the record (complete or invisible), then the alias move. After
        the record, it waits out any running ``registry gc`` and publishes the artifact again if that gc
        took it (see ``retention``).
        With ``make_current`` a prior becomes the fleet's current core prior, a site prior or
        encoder its site's current one.

        A named run (``name``) registers exactly once: its id is :func:`named_id`, and ``settings``
        (what makes two runs of that name the same run) are kept as a digest. Registering it again,
        after a crash or from a concurrent run, returns the existing record and completes its alias
        move if that never happened; the same name with other data or settings is refused. ``tags``
        (``{key: value}``, see ``records.check_tag``) are the first registration's: a rerun keeps them.
        """
        parents = list(parents)
        digest = key = None
        config = dict(config or {})
        if name is not None:
            config["settings_digest"] = settings_digest(settings or {})
        if artifact is not None:
            path = Path(artifact)
            if not path.is_file():
                raise RegistryError(f"artifact {path}: no such file")
            digest = file_sha256(path)
        fields = dict(site=site, parents=parents, aligned_to=aligned_to, config=config, metrics=metrics or {},
                      fingerprint=fingerprint, artifact=None if digest is None else f"{ARTIFACTS}/{digest}",
                      hash=digest, name=name, tags=dict(tags or {}))
        record = Record.new(kind, **fields)  # validates every field before anything is written
        if name is not None:
            existing = self.find_run(kind, name)
            if existing is not None:
                return self.complete(self.same_run(existing, fingerprint, settings), make_current)
        for ref in [*parents, *([aligned_to] if aligned_to else [])]:
            self.get(ref)  # refuse links to records that do not exist
        if digest is not None:
            key = self._publish_artifact(path, digest, progress)
            record = replace(record, artifact=key)
        if name is not None:
            record = replace(record, id=named_id(kind, name))
        while True:
            try:
                self.store.create(f"{RECORDS}/{record.id}.json", record.to_json())
                break
            except AlreadyExists:
                if name is not None:  # a concurrent run of the same name registered first
                    return self.complete(self.same_run(self.get(record.id), fingerprint, settings), make_current)
                record = replace(record, id=Record.new(kind, **fields).id)  # an id collision: draw again
        if key is not None:  # a gc that listed the records before this one may delete the artifact: re-check
            retention.wait_for_collectors(self.store)
            if not self.store.exists(key):
                log.warning("artifact %s was collected while %s was being registered; publishing it again",
                            key, record.id)
                try:
                    self.store.put_file(key, path, progress)  # under the key the record holds
                except AlreadyExists:
                    pass  # published again meanwhile (by another publisher of the same bytes)
        alias = current_alias(kind, site)
        if make_current and alias:  # a new record: no earlier move to it can exist
            aliases.move(self.store, alias, record.id, unless_current=True)
        self._mirror(record)
        return record

    def _mirror(self, record: Record) -> None:
        """Copy the new ``record`` to MLflow when tracking is on (``pipeline.tracking``); a failure only warns."""
        from pipeline.tracking import Tracking

        try:
            tracking = Tracking.from_env()
            if tracking is not None:
                tracking.mirror([record], self.artifact_uri)
        except Exception as error:  # noqa: BLE001 - the registry has the record; MLflow gets only a copy
            log.warning("could not copy record %s to MLflow (%s: %s); `flowprior registry mirror` copies it later",
                        record.id, type(error).__name__, str(error)[:300])

    def complete(self, record: Record, make_current: bool = True) -> Record:
        """Finish ``record``'s publish: move its current-alias to it unless that alias already pointed
        at it at some time (a crash between the record and the alias move leaves exactly this undone;
        a later move away from it, e.g. a newer core prior, is never undone)."""
        alias = current_alias(record.kind, record.site)
        if make_current and alias and not aliases.pointed_at(self.store, alias, record.id,
                                                             aliases.utc(record.created_at)):
            aliases.move(self.store, alias, record.id, unless_current=True)
        return record

    def make_current(self, record: Record) -> AliasMove | None:
        """Point ``record``'s current-alias (``core`` for a prior, ``<kind>.<site>`` for a site's record) at it,
        unless it already does: what rerunning a step that already ran does (see ``sites.steps.find_step``)."""
        alias = current_alias(record.kind, record.site)
        return aliases.move(self.store, alias, record.id, unless_current=True) if alias else None

    def same_run(self, existing: Record, fingerprint: str | None, settings: dict | None) -> Record:
        """``existing`` if it is the run a caller with this data and these ``settings`` would register under
        its name; else a ``RegistryError`` (the same name was used for another run). Records from before
        settings were kept are compared by data only."""
        digest = existing.config.get("settings_digest")
        if existing.fingerprint != fingerprint or digest not in (None, settings_digest(settings or {})):
            what = "data" if existing.fingerprint != fingerprint else "settings"
            raise RegistryError(f"run name {existing.name!r} is already registered as {existing.id} with other "
                                f"{what}; choose another name (or none) for a new run")
        return existing

    def find_run(self, kind: str, name: str, legacy: bool = False) -> Record | None:
        """The record of the run ``name`` of ``kind``; with ``legacy`` also one registered before names
        fixed ids (found by listing every record)."""
        try:
            return self.get(named_id(kind, name))
        except MissingRecord:
            pass
        found = [r for r in self.records(kind=kind) if r.name == name] if legacy else []
        return found[0] if found else None

    def _publish_artifact(self, path: Path, digest: str, progress: Progress | None) -> str:
        """Publish the file under its content hash and return its key. If that key already holds other
        bytes (a planted or corrupted object; nothing is ever overwritten), publish beside it."""
        suffix = "".join(path.suffixes[-1:])
        key = f"{ARTIFACTS}/{digest}{suffix}"
        try:
            self.store.put_file(key, path, progress)
            return key
        except AlreadyExists:
            if self._object_sha256(key) == digest:
                return key  # the same bytes are already published (keys are content hashes)
        other = f"{ARTIFACTS}/{digest}-{secrets.token_hex(4)}{suffix}"
        log.warning("store %s: %s holds bytes that do not match its name; publishing the artifact as %s "
                    "(`flowprior registry check` lists such objects)", self.store.uri, key, other)
        self.store.put_file(other, path, progress)
        return other

    def _object_sha256(self, key: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            self.store.get_file(key, Path(tmp) / "object")
            return file_sha256(Path(tmp) / "object")

    def publish_prior(self, prior: "FlowPrior", *, kind: str = "prior", site: str | None = None,
                      **fields: object) -> Record:
        """Save ``prior`` as a tensor-only checkpoint and register it (see ``register``); its feature
        contract (``info["features"]``, see :mod:`pipeline.data.schema`) goes into the record's config."""
        if "features" in prior.info:
            fields["config"] = {**(fields.get("config") or {}), "features": prior.info["features"]}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prior.safetensors"
            prior.save(path)
            return self.register(kind, site=site, artifact=path, **fields)

    def move_alias(self, alias: str, record_id: str, reason: str | None = None,
                   expect: str | None = None) -> AliasMove:
        """Point ``alias`` at ``record_id`` (``expect``: only while it points at that id; see
        ``aliases.move``). The fleet's aliases take only their kind of record: ``core`` a prior,
        ``<kind>.<site>`` a record of that kind and site; a rollback is a move to an older record."""
        record = self.get(record_id)
        kind, _, site = alias.partition(".")
        wanted = ("prior", None) if alias == CORE_ALIAS else (kind, site) if site and kind in KINDS else None
        if wanted and (record.kind, record.site) != wanted:
            raise RegistryError(f"alias {alias!r} points at {wanted[0]} records{f' of site {site}' if site else ''}; "
                                f"{record_id} is {'an' if record.kind[0] in 'aeiou' else 'a'} {record.kind}"
                                f"{f' of site {record.site}' if record.site else ''}")
        if reason is not None and (len(reason) > 500 or not reason.isprintable()):
            raise RegistryError("--reason: printable text of at most 500 characters")
        return aliases.move(self.store, alias, record_id, expect=expect, reason=reason)

    def current(self, prefix: str = "") -> dict[str, AliasMove]:
        """``{alias: its latest move}`` for every alias (whose name starts with ``prefix``), in one listing."""
        return aliases.current(self.store, prefix)

    # -- reading -------------------------------------------------------------------------------
    def get(self, record_id: str) -> Record:
        validate_name(record_id, "record id")
        key = f"{RECORDS}/{record_id}.json"
        try:
            data = self.store.read(key)
        except FileNotFoundError:
            raise MissingRecord(f"no record {record_id!r} in the registry at {self.store.uri}") from None
        return Record.from_json(data, self.store.uri_of(key), expected_id=record_id)

    def records(self, kind: str | None = None, site: str | None = None) -> list[Record]:
        """All readable records (oldest first), optionally of one kind and/or one site. A record file
        that does not parse, or whose id is not its name, is left out with a warning naming it
        (``flowprior registry check`` reports every such problem)."""
        records = []
        for record_id, data in self.raw_records().items():
            try:
                records.append(Record.from_json(data, self.store.uri_of(f"{RECORDS}/{record_id}.json"), record_id))
            except RegistryError as error:
                log.warning("skipping %s", error)
        records = [r for r in records if (kind is None or r.kind == kind) and (site is None or r.site == site)]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def record_files(self) -> tuple[dict[str, ObjectInfo], list[str]]:
        """One listing of ``registry/records/``: ``{record id: its file's listing}`` for the files named
        ``<record id>.json``, and the other names there (``prior-x (1).json``, a copy a person or a sync
        tool made): every reader skips those, ``registry check`` reports them, ``registry gc`` honours them."""
        files, stray = {}, []
        for name, info in self.store.list_details(RECORDS).items():
            record_id = record_id_of(name)
            if record_id is None:
                stray.append(name)
            else:
                files[record_id] = info
        return files, stray

    def raw_records(self, listing: dict[str, ObjectInfo] | None = None,
                    compact_after: int | None = None) -> dict[str, bytes]:
        """``{record id: the bytes of its file}`` for every record file the listing shows (``listing``: one
        :meth:`record_files` already made; without it, a new one, warning about each name it skips).

        The listing is the truth; a snapshot row is used instead of reading a file only where the
        listing vouches for it (same size, and the MD5 the server reports for the file). Where the
        listing carries no MD5 (local disk) every file is read. When the snapshot lacked ``compact_after``
        records or more (default ``snapshots.COMPACT_AFTER``), a fresh one is written for the next reader."""
        if listing is None:
            listing, stray = self.record_files()
            for name in stray:
                log.warning("skipping %s/%s: not a record file name (<record id>.json); `flowprior registry check` "
                            "lists such files", self.store.uri, f"{RECORDS}/{name}")
        verifiable = any(info.md5 for info in listing.values())
        cached = snapshots.read_latest(self.store) if verifiable else {}
        raw = snapshots.vouched(cached, listing)
        missing = [i for i in listing if i not in raw]
        raw.update(zip(missing, self.store.read_many([f"{RECORDS}/{i}.json" for i in missing]), strict=True))
        if verifiable and missing and len(missing) >= (compact_after or snapshots.COMPACT_AFTER):
            snapshots.write(self.store, raw)
        return {i: raw[i] for i in listing}

    def compact(self) -> None:
        """Bring the record and alias snapshots up to date (see ``snapshots``), so that the next reader, however
        cold, reads them and not every record a fleet run just added: what a fleet command does at its end.
        Nothing on local disk, where readers read the files (no listing there vouches for a snapshot)."""
        listing, _ = self.record_files()
        if any(info.md5 for info in listing.values()):
            self.raw_records(listing, compact_after=1)
            aliases.current(self.store, compact_after=1)

    def every_record_file(self) -> dict[str, bytes]:
        """``{name: bytes}`` of every object in ``registry/records/``, whatever its name or content: what
        ``registry gc`` must honour (a record a newer flowprior wrote, a copy under another name)."""
        listing, stray = self.record_files()
        files = {f"{i}.json": data for i, data in self.raw_records(listing).items()}
        for name in stray:
            try:
                files[name] = self.store.read_listed(RECORDS, name)
            except (FileNotFoundError, IsADirectoryError):
                pass  # gone since the listing, or a folder: nothing to honour
        return files

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
        key = self.artifact_key(record)
        try:
            self.store.get_file(key, path)
        except FileNotFoundError:
            raise IntegrityError(f"record {record.id}: artifact {self.store.uri_of(key)} is missing") from None
        found = file_sha256(path)
        if found != record.hash:
            path.unlink()
            raise IntegrityError(f"record {record.id}: artifact {self.store.uri_of(key)} has SHA-256 {found[:12]}... "
                                 f"but the registry recorded {record.hash[:12]}...; it was changed after publishing, "
                                 "refusing it")
        return path

    def artifact_key(self, record: Record) -> str:
        """The store key of ``record``'s artifact. Records hold keys; older ones hold absolute URIs, which
        are read as keys from their ``artifacts/`` part on, so a copied or re-mounted store still loads
        (the hash check guards what is read)."""
        artifact = record.artifact or ""
        if artifact.startswith(f"{ARTIFACTS}/"):
            return check_key(artifact)
        key = self.store.key_of(artifact)
        if key is None and f"/{ARTIFACTS}/" in artifact:
            key = f"{ARTIFACTS}/{artifact.rsplit(f'/{ARTIFACTS}/', 1)[1]}"
        try:
            return check_key(key or "")
        except ValueError:
            raise RegistryError(f"record {record.id}: cannot find its artifact {artifact!r} in the store "
                                f"{self.store.uri}") from None

    def artifact_uri(self, record: Record) -> str:
        """Where ``record``'s artifact is now (its key in this store, as a URI)."""
        return self.store.uri_of(self.artifact_key(record))

    def load_prior(self, record_id: str) -> "FlowPrior":
        """The prior of a ``prior``/``site-prior`` record, hash-checked, loaded without executing code."""
        from pipeline.method.prior import FlowPrior

        return self._load(record_id, ("prior", "site-prior"), "a prior", FlowPrior.load)

    def load_encoder(self, record_id: str) -> "Autoencoder":
        """The autoencoder of an ``encoder`` record (a site's, aligned to ``record.aligned_to``), hash-checked,
        loaded without executing code."""
        from pipeline.method.encoder import load_encoder

        return self._load(record_id, ("encoder",), "an encoder", load_encoder)

    def _load(self, record_id: str, kinds: tuple[str, ...], what: str, load):
        record = self.get(record_id)
        if record.kind not in kinds:
            raise RegistryError(f"record {record_id} is a {record.kind}, not {what}")
        with tempfile.TemporaryDirectory() as tmp:
            path = self.fetch_artifact(record, Path(tmp) / "artifact.safetensors")
            return load(path, expected_sha256=record.hash)

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
        inside = family(records, prior)
        by_id = {r.id: r for r in records}
        current = [move.target for move in self.current("encoder.").values()]
        return [by_id[e] for e in current if e in by_id and by_id[e].aligned_to not in inside]


def family(records: list[Record], prior: str) -> set[str]:
    """``prior`` and every record derived from it: whatever has a parent in the family joins it."""
    inside, grew = {prior}, True
    while grew:
        grown = inside | {r.id for r in records if inside.intersection(r.parents)}
        grew, inside = grown != inside, grown
    return inside
