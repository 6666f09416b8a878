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

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import RegistryError
from pipeline.registry.records import Record
from pipeline.registry.snapshots import ALIAS_SNAPSHOTS, SNAPSHOTS
from pipeline.storage import Store

if TYPE_CHECKING:
    from pipeline.registry.registry import Registry

RAY_RUNS = "ray-runs"
LEASES = "registry/gc"
LEASE_SECONDS = 900.0  # a gc stops deleting after this; publishers wait at most this long
CLOCK_MARGIN = 60.0  # a lease counts as live this long after its expiry (clocks of gc and publisher differ)
DAY = 86400.0


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

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.doomed)


def live_leases(store: Store, now: float | None = None) -> list[str]:
    """The leases of gcs running now (a lease's expiry, in unix seconds, leads its name)."""
    now = time.time() if now is None else now
    return [n for n in store.list(LEASES)
            if n.endswith(".lease") and n.split("-", 1)[0].isdigit() and int(n.split("-", 1)[0]) + CLOCK_MARGIN > now]


def wait_for_collectors(store: Store, poll: float = 0.25) -> None:
    """Return once every gc that held a live lease at the call has ended (at most ``LEASE_SECONDS`` +
    ``CLOCK_MARGIN``). A gc that starts later lists the records after its lease, so it sees the caller's
    record and need not be waited for: back-to-back gcs cannot starve a publisher."""
    running = set(live_leases(store))
    while running:
        time.sleep(poll)
        running &= set(live_leases(store))


def plan(store: Store, records: list[Record], artifact_keys: set[str], keep_days: float,
         now: float | None = None) -> list[Doomed]:
    """What a gc would delete, given the records it listed and their artifacts' keys. An artifact whose name
    starts with a record's hash is kept too (a record from before keys, whose URI did not resolve)."""
    now = time.time() if now is None else now
    hashes = {r.hash for r in records if r.hash}
    cutoff = now - keep_days * DAY
    doomed = []

    def age(modified: float | None) -> float:
        return (now - (modified if modified is not None else now)) / DAY

    for name, info in store.list_tree("artifacts").items():
        key = f"artifacts/{name}"
        if key not in artifact_keys and name[:64] not in hashes and info.modified is not None \
                and info.modified < cutoff:
            doomed.append(Doomed(key, "artifact", info.size, age(info.modified), "no record points at it"))

    runs: dict[str, list] = {}
    for name, info in store.list_tree(RAY_RUNS).items():
        runs.setdefault(name.split("/", 1)[0], []).append(info)
    names = {r.name for r in records if r.name}
    for run, infos in sorted(runs.items()):
        last = max((i.modified for i in infos if i.modified is not None), default=None)
        if last is not None and last < cutoff:
            why = f"{'registered' if run in names else 'abandoned'}, {len(infos)} objects, last written"
            doomed.append(Doomed(f"{RAY_RUNS}/{run}", "run", sum(i.size for i in infos), age(last), why))

    for folder in (SNAPSHOTS, ALIAS_SNAPSHOTS):
        listed = {n: i for n, i in store.list_tree(folder).items() if "/" not in n and n.endswith(".parquet")}
        for name in sorted(listed)[:-1]:  # all but the newest (names sort by record count)
            info = listed[name]
            if info.modified is not None and info.modified < cutoff:
                doomed.append(Doomed(f"{folder}/{name}", "snapshot", info.size, age(info.modified),
                                     "superseded by a newer snapshot"))
    return doomed


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
        records = registry.records()
        keys = set()
        for record in (r for r in records if r.artifact):
            try:
                keys.add(registry.artifact_key(record))
            except RegistryError:
                pass  # kept by its hash (see plan)
        collection = Collection(plan(store, records, keys, keep_days))
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
