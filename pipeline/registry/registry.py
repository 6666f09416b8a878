"""One-call questions and writes on the registry, from Python (the CLI is a thin layer over this).

The registry deals in files and records: publishing and loading models is ``pipeline.sites.models``.

    registry = Registry(Store.open("s3://bucket/flowprior"))
    record = registry.register("prior", artifact="prior.safetensors", fingerprint=features.fingerprint)
    registry.aligned("R80711")     # the prior R80711's current encoder is aligned to
    registry.stale()               # encoders aligned to anything but the current core prior's family
    registry.lineage(encoder_id)   # the encoder, its prior, that prior's parents, ... back to data
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from pipeline.errors import RegistryError
from pipeline.hashing import file_sha256, json_digest
from pipeline.registry import aliases, artifacts, leases, record_files
from pipeline.registry.aliases import AliasMove
from pipeline.registry.records import KINDS, Record
from pipeline.storage import AlreadyExists, ByteProgress, Store, validate_name
from pipeline.storage.layout import ARTIFACTS, RECORDS

CORE_ALIAS = "core"

log = logging.getLogger(__name__)

OnRegister = Callable[[Record, "Registry"], None]  # told of every new record (e.g. ``tracking.mirror_records``)


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
    return json_digest(settings)[:16]


class Registry:
    """The records and aliases under ``store``; ``on_register`` is called with each new record (a rerun of a
    named run that meets its existing record adds none)."""

    def __init__(self, store: Store, on_register: OnRegister | None = None) -> None:
        self.store = store
        self.on_register = on_register

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
        progress: ByteProgress | None = None,
    ) -> Record:
        """Publish ``artifact`` (a local file) and then an immutable record pointing at it.

        Order makes a crash harmless: the artifact is published under its content hash first
        (complete or invisible), then the record (complete or invisible), then the alias move. After
        the record, it waits out any running ``registry gc`` and publishes the artifact again if that gc
        took it (see ``retention``).
        With ``make_current`` a prior becomes the fleet's current core prior, a site prior or encoder its site's.

        A named run (``name``) registers exactly once: its id is :func:`named_id`, and ``settings``
        (what makes two runs of that name the same run) are kept as a digest. Registering it again,
        after a crash or from a concurrent run, returns the existing record and completes its alias
        move if that never happened; the same name with other data or settings is refused. ``tags``
        (``{key: value}``, see ``records.check_tag``) are the first registration's: a rerun keeps them; the
        artifact's size goes into the config (``artifact_bytes``).
        """
        config = {**(config or {}), **({"settings_digest": settings_digest(settings or {})} if name else {})}
        path = None if artifact is None else Path(artifact)
        if path is not None and not path.is_file():
            raise RegistryError(f"artifact {path}: no such file")
        config |= {} if path is None else {"artifact_bytes": path.stat().st_size}
        digest = None if path is None else file_sha256(path)
        fields = dict(site=site, parents=list(parents), aligned_to=aligned_to, config=config, metrics=metrics or {},
                      fingerprint=fingerprint, artifact=None if digest is None else f"{ARTIFACTS}/{digest}",
                      hash=digest, name=name, tags=dict(tags or {}))
        record = Record.new(kind, **fields)  # validates every field before anything is written
        existing = self.find_run(kind, name) if name is not None else None
        for ref in [*fields["parents"], *([aligned_to] if aligned_to else [])] if existing is None else []:
            self.get(ref)  # refuse links to records that do not exist
        if existing is None and path is not None:
            record = replace(record, artifact=artifacts.publish(self.store, path, digest, progress))
        if name is not None:
            record = replace(record, id=named_id(kind, name))
        existing = existing or self._create(record, fields)
        if existing is not None:  # the run of this name registered before (a rerun, or a concurrent run)
            return self.complete(self.same_run(existing, fingerprint, settings), make_current)
        if path is not None:
            self._publish_again_if_collected(record, path, progress)
        alias = current_alias(kind, site)
        if make_current and alias:  # a new record: no earlier move to it can exist
            aliases.move(self.store, alias, record.id, unless_current=True)
        if self.on_register is not None:
            self.on_register(record, self)
        return record

    def _create(self, record: Record, fields: dict) -> Record | None:
        """Write ``record``; None once written, or the record a concurrent run of the same name wrote first."""
        while True:
            try:
                self.store.create(f"{RECORDS}/{record.id}.json", record.to_json())
                return None
            except AlreadyExists:
                if record.name is not None:
                    return self.get(record.id)
                record = replace(record, id=Record.new(record.kind, **fields).id)  # an id collision: draw again

    def _publish_again_if_collected(self, record: Record, path: Path, progress: ByteProgress | None) -> None:
        """A gc that listed the records before ``record`` may have deleted its artifact: wait out running gcs
        (see ``retention``) and publish it again under the key the record holds if it is gone."""
        leases.wait_for_collectors(self.store)
        if not self.store.exists(record.artifact):
            log.warning("artifact %s was collected while %s was being registered; publishing it again",
                        record.artifact, record.id)
            try:
                self.store.put_file(record.artifact, path, progress)
            except AlreadyExists:
                pass  # published again meanwhile (by another publisher of the same bytes)

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
        for record_id, data in record_files.read(self.store).items():
            try:
                records.append(Record.from_json(data, self.store.uri_of(f"{RECORDS}/{record_id}.json"), record_id))
            except RegistryError as error:
                log.warning("skipping %s", error)
        records = [r for r in records if (kind is None or r.kind == kind) and (site is None or r.site == site)]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def alias(self, alias: str) -> str | None:
        move = aliases.latest(self.store, alias)
        return move.target if move else None

    def alias_history(self, alias: str) -> list[AliasMove]:
        return aliases.history(self.store, alias)

    def fetch_artifact(self, record: Record, path: str | os.PathLike) -> Path:
        """Download ``record``'s artifact to ``path`` and check its hash; refuse a mismatch (``IntegrityError``)."""
        return artifacts.fetch(self.store, record, path)

    def artifact_key(self, record: Record) -> str:
        """The store key of ``record``'s artifact (see ``artifacts.key_of``)."""
        return artifacts.key_of(self.store, record)

    def artifact_uri(self, record: Record) -> str:
        """Where ``record``'s artifact is now (its key in this store, as a URI)."""
        return self.store.uri_of(self.artifact_key(record))

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
