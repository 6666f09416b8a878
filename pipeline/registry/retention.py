"""What ``flowprior registry gc`` may delete, and how it stays safe beside concurrent publishers.

Deleted, once older than ``keep_days`` (the last write under it, for a run folder):

* artifacts no record points at (a publish that crashed between artifact and record, or planted);
* run folders ``ray-runs/<run>/`` of Ray Train and Tune, registered or abandoned: a registered run's
  result lives in its record and artifact, and a run still going keeps writing under its folder;
* snapshots other than the newest (caches that the newest supersedes).

Records and alias entries are never deleted.

The race to close: a publisher whose artifact has the same bytes as an unreferenced object finds the
object there and does not upload it (artifacts are content-addressed), while a gc that listed the
records before that publisher's record appeared deletes the object. So a gc holds a *lease* while it
lists and deletes (``registry/gc/<expiry>-<random>.lease``, created before it lists anything and
deleted when it is done; it stops deleting before the lease expires). A publisher, after its record is
written, waits until no live lease is left and then makes sure the artifact is there, uploading it
again if not (:func:`wait_for_collectors`, called by ``Registry.register``). Every gc that could have
missed the record listed before it was written, so it held its lease then (and the publisher either
sees that lease and waits for it to end, or finds it already ended and the deletes done); a gc that
starts later sees the record.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import RegistryError
from pipeline.registry.layout import ARTIFACTS, RECORDS, record_id_of
from pipeline.registry.records import Record
from pipeline.registry.snapshots import ALIAS_SNAPSHOTS, SNAPSHOTS
from pipeline.storage import Store
from pipeline.storage.store import usable

if TYPE_CHECKING:
    from pipeline.registry.registry import Registry

RAY_RUNS = "ray-runs"
LEASES = "registry/gc"
LEASE_SECONDS = 900.0  # a gc stops deleting after this; publishers wait at most this long
CLOCK_MARGIN = 60.0  # a lease counts as live this long after its expiry (clocks of gc and publisher differ)
DAY = 86400.0

log = logging.getLogger(__name__)


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


def live_leases(store: Store, now: float | None = None) -> list[str]:
    """The leases of gcs running now (a lease's expiry, in unix seconds, leads its name)."""
    now = time.time() if now is None else now
    return [n for n in store.list(LEASES)
            if n.endswith(".lease") and n.split("-", 1)[0].isdigit() and int(n.split("-", 1)[0]) + CLOCK_MARGIN > now]


def wait_for_collectors(store: Store, poll: float = 0.25, limit: float = LEASE_SECONDS + CLOCK_MARGIN) -> bool:
    """Return once every gc that held a live lease at the call has ended, or after ``limit`` seconds by the
    caller's own clock (True if they all ended). A gc stops deleting ``CLOCK_MARGIN`` before its lease ends
    and takes at most ``LEASE_SECONDS``, so no real gc outlasts the limit; a lease whose name claims a later
    expiry (a gc host whose clock runs ahead, a stray file) cannot hold a publisher longer. A gc that starts
    later lists the records after its lease, so it sees the caller's record and need not be waited for:
    back-to-back gcs cannot starve a publisher."""
    deadline = time.monotonic() + limit
    running = set(live_leases(store))
    while running:
        if time.monotonic() >= deadline:
            log.warning("store %s: gave up waiting for gc lease(s) %s after %.0f s (no gc runs that long: a clock "
                        "ahead, or a stray file under %s/)", store.uri, ", ".join(sorted(running)), limit, LEASES)
            return False
        time.sleep(poll)
        running &= set(live_leases(store))
    return True


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


def read_record_files(registry: "Registry") -> tuple[list[Record], Kept, dict[str, Kept]]:
    """Every file in ``registry/records/``: the records that parse, what all files mention, and for each file
    that is not a readable record (by content or name) what it mentions."""
    records, kept, unreadable = [], Kept(), {}
    for name, data in registry.every_record_file().items():
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


def collect(registry: "Registry", keep_days: float, dry_run: bool = False,
            lease_seconds: float = LEASE_SECONDS) -> Collection:
    """Plan (and unless ``dry_run`` delete) under a lease; the records are listed *after* the lease is
    taken, so that every publisher this gc could miss waits for it (see the module docstring)."""
    store, lease = registry.store, None
    if not dry_run:
        expires = int(time.time() + lease_seconds)
        lease = f"{LEASES}/{expires}-{secrets.token_hex(4)}.lease"
        store.create(lease, b"")
    try:
        deadline = time.time() + lease_seconds - CLOCK_MARGIN
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
        for name in store.list(LEASES):  # leases of gcs that crashed, long expired
            if name.endswith(".lease") and name.split("-", 1)[0].isdigit() \
                    and int(name.split("-", 1)[0]) + 2 * CLOCK_MARGIN < time.time():
                store.delete(f"{LEASES}/{name}")
        return collection
    finally:
        if lease is not None:
            store.delete(lease)
