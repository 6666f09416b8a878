"""What ``flowprior registry gc`` may delete, and how it stays safe beside concurrent publishers.

Deleted, once older than ``keep_days`` (the last write under it, for a run folder):

* artifacts no record points at (a publish that crashed between artifact and record, or planted);
* run folders ``ray-runs/<run>/`` of Ray Train and Tune, registered or abandoned: a registered run's
  result lives in its record and artifact, and a run still going keeps writing under its folder;
* snapshots other than the newest (caches that the newest supersedes).

Records and alias entries are never deleted. So the core prior an adapter site prior needs is never collected:
its artifact is one a record (the core's) points at, kept for as long as the record exists.

The race to close: a publisher whose artifact has the same bytes as an unreferenced object finds the
object there and does not upload it (artifacts are content-addressed), while a gc that listed the
records before that publisher's record appeared deletes the object. So a gc holds a *lease* while it
lists and deletes (``registry/gc/<expiry>-<random>.lease``, created before it lists anything and
deleted when it is done; it stops deleting before the lease expires). A publisher, after its record is
written, waits until no live lease is left and then makes sure the artifact is there, uploading it
again if not (:func:`.leases.wait_for_collectors`, called by ``Registry.register``). Every gc that could have
missed the record listed before it was written, so it held its lease then (and the publisher either
sees that lease and waits for it to end, or finds it already ended and the deletes done); a gc that
starts later sees the record.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pipeline.errors import RegistryError
from pipeline.registry import leases, record_files
from pipeline.registry.records import Record, record_id_of
from pipeline.registry.registry import Registry
from pipeline.storage import Store, usable
from pipeline.storage.layout import ALIAS_SNAPSHOTS, ARTIFACTS, RAY_RUNS, RECORDS, SNAPSHOTS

DAY = 86400.0


def usable_key(key: str) -> bool:
    """Whether every part of ``key`` (as a listing gave it) can be part of a store key."""
    return all(map(usable, key.split("/")))


@dataclass(frozen=True)
class Doomed:
    key: str  # an object, or a run folder (``ray-runs/<run>``)
    what: str  # "artifact", "run" or "snapshot"
    bytes: int
    age_days: float
    why: str


@dataclass
class Collection:
    doomed: list[Doomed]
    deleted: list[str] = field(default_factory=list)  # keys of what was deleted (all of doomed, unless stopped)
    stopped: str | None = None  # why deleting stopped before the end (the lease ran out)
    kept: dict[str, list[str]] = field(default_factory=dict)  # unreadable record file -> the artifacts it kept

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.doomed)


HASH_TEXT = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
ARTIFACT_TEXT = re.compile(rb"artifacts/([A-Za-z0-9._=-]+)")


@dataclass
class Kept:
    """What the record files mention: artifact names (below ``artifacts/``) and SHA-256 digests."""

    names: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, data: bytes) -> "Kept":
        """Everything one record file's bytes mention, read as text: a record this flowprior cannot parse (a
        newer version's, an unknown kind, damaged JSON) still keeps what it names."""
        return cls({m.decode() for m in ARTIFACT_TEXT.findall(data)}, {m.decode() for m in HASH_TEXT.findall(data)})

    def holds(self, name: str) -> bool:
        """Whether the artifact ``artifacts/<name>`` is mentioned: by its name, or by the hash it starts with
        (``<hash>.<ext>``, ``<hash>-<random>.<ext>``)."""
        return name in self.names or name[:64] in self.hashes

    def update(self, other: "Kept") -> None:
        self.names |= other.names
        self.hashes |= other.hashes


def plan(store: Store, records: list[Record], kept: Kept, keep_days: float,
         now: float | None = None) -> list[Doomed]:
    """What a gc would delete, given the records it read (their run names) and what every record file
    mentions (``kept``: an artifact any record file names, by key or hash, stays). Objects whose names
    cannot be keys (``x (1).bin``) are never touched."""
    now = time.time() if now is None else now
    cutoff = now - keep_days * DAY
    doomed = []

    def age(modified: float | None) -> float:
        return (now - (modified if modified is not None else now)) / DAY

    for name, info in store.list_tree(ARTIFACTS).items():
        if not kept.holds(name) and usable_key(f"{ARTIFACTS}/{name}") and info.modified is not None \
                and info.modified < cutoff:
            doomed.append(Doomed(f"{ARTIFACTS}/{name}", "artifact", info.size, age(info.modified),
                                 "no record points at it"))

    runs: dict[str, list] = {}
    for name, info in store.list_tree(RAY_RUNS).items():
        runs.setdefault(name.split("/", 1)[0], []).append((name, info))
    names = {r.name for r in records if r.name}
    for run, listed in sorted(runs.items()):
        infos = [info for _, info in listed]
        last = max((i.modified for i in infos if i.modified is not None), default=None)
        if last is not None and last < cutoff and all(usable_key(f"{RAY_RUNS}/{n}") for n, _ in listed):
            why = f"{'registered' if run in names else 'abandoned'}, {len(infos)} objects, last written"
            doomed.append(Doomed(f"{RAY_RUNS}/{run}", "run", sum(i.size for i in infos), age(last), why))

    for folder in (SNAPSHOTS, ALIAS_SNAPSHOTS):
        listed = {n: i for n, i in store.list_tree(folder).items() if "/" not in n and n.endswith(".parquet")
                  and usable(n)}
        for name in sorted(listed)[:-1]:  # all but the newest (names sort by record count)
            info = listed[name]
            if info.modified is not None and info.modified < cutoff:
                doomed.append(Doomed(f"{folder}/{name}", "snapshot", info.size, age(info.modified),
                                     "superseded by a newer snapshot"))
    return doomed


def read_record_files(registry: Registry) -> tuple[list[Record], Kept, dict[str, Kept]]:
    """Every file in ``registry/records/``: the records that parse, what all files mention, and for each file
    that is not a readable record (by content or name) what it mentions."""
    records, kept, unreadable = [], Kept(), {}
    for name, data in record_files.every_file(registry.store).items():
        mentions = Kept.of(data)
        kept.update(mentions)
        record_id = record_id_of(name)
        try:
            if record_id is None:
                raise RegistryError(f"{name}: not a record file name")
            records.append(Record.from_json(data, name, record_id))
        except RegistryError:
            unreadable[f"{RECORDS}/{name}"] = mentions
    return records, kept, unreadable


def collect(registry: Registry, keep_days: float, dry_run: bool = False,
            lease_seconds: float = leases.LEASE_SECONDS) -> Collection:
    """Plan (and unless ``dry_run`` delete) under a lease; the records are listed *after* the lease is
    taken, so that every publisher this gc could miss waits for it (see the module docstring)."""
    store, lease = registry.store, None
    deadline = time.time() + lease_seconds - leases.CLOCK_MARGIN
    if not dry_run:
        lease, deadline = leases.take(store, lease_seconds)
    try:
        records, kept, unreadable = read_record_files(registry)
        collection = Collection(plan(store, records, kept, keep_days))
        present = [n for n in store.list_tree(ARTIFACTS)]
        for key, mentions in unreadable.items():
            held = [f"{ARTIFACTS}/{n}" for n in present if mentions.holds(n)]
            if held:
                collection.kept[key] = held
        if dry_run:
            return collection
        for doomed in collection.doomed:
            if time.time() > deadline:
                collection.stopped = "its lease ran out; run gc again for the rest"
                break
            if doomed.what == "run":
                store.delete_many([f"{doomed.key}/{k}" for k in store.list_tree(doomed.key)], prune_below=RAY_RUNS)
            else:
                store.delete(doomed.key)
            collection.deleted.append(doomed.key)
        leases.clear_expired(store)
        return collection
    finally:
        if lease is not None:
            store.delete(lease)
