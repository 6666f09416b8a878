"""Aliases (the fleet's current core prior, each site's current encoder) as append-only logs.

Alias ``name`` is the folder ``registry/aliases/<name>/`` holding one object per move,
``<version>.json`` with version 1, 2, 3, ...; the current target is the highest version's.
A move writes version ``n + 1`` create-if-absent (``If-None-Match: *`` on S3, ``link`` on local
disk): of two writers racing for the same version exactly one wins and the other re-reads and
tries ``n + 2``. So moves are serialised, none is lost, and each entry's ``previous`` is the
target of the entry before it: the history is a chain.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from pipeline.errors import Contended, RegistryError
from pipeline.registry import snapshots
from pipeline.storage import AlreadyExists, Store, usable, validate_name
from pipeline.storage.layout import ALIAS_SNAPSHOTS, ALIASES

VERSION_DIGITS = 10
CLOCK_SKEW = timedelta(hours=1)  # how far writers' clocks may disagree


@dataclass(frozen=True)
class AliasMove:
    alias: str
    version: int
    target: str  # the record id the alias points to from this move on
    previous: str | None  # the target before this move
    moved_at: str  # ISO 8601, UTC
    reason: str | None = None  # why it was moved (``registry alias set --reason``), for the history


def _key(alias: str, version: int) -> str:
    return f"{ALIASES}/{alias}/{version:0{VERSION_DIGITS}d}.json"


def parse(data: bytes, where: str, alias: str, version: int) -> AliasMove:
    """An alias entry from its file's bytes; a ``RegistryError`` naming ``where`` if it is not one."""
    try:
        raw = json.loads(data)
        move = AliasMove(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, RecursionError) as error:
        raise RegistryError(f"{where}: not a valid alias entry ({type(error).__name__}: {error})") from None
    if move.alias != alias or move.version != version or not isinstance(move.target, str) \
            or not isinstance(move.previous, (str, type(None))) or not isinstance(move.moved_at, str) \
            or not isinstance(move.reason, (str, type(None))):
        raise RegistryError(f"{where}: not a valid alias entry (it says alias {move.alias!r} version {move.version!r} "
                            f"-> {move.target!r}, previous {move.previous!r})")
    try:
        utc(move.moved_at)
    except ValueError:
        raise RegistryError(f"{where}: not a valid alias entry (moved_at {move.moved_at!r:.40} is not a "
                            "time)") from None
    return move


def utc(text: str) -> datetime:
    """An ISO 8601 time, taken as UTC if it names no zone."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _read(store: Store, alias: str, version: int) -> AliasMove:
    key = _key(alias, version)
    return parse(store.read(key), store.uri_of(key), alias, version)


def _versions(store: Store, alias: str) -> list[int]:
    names = store.list(f"{ALIASES}/{validate_name(alias, 'alias')}")
    return sorted(int(n[: -len(".json")]) for n in names if n.endswith(".json") and n[: -len(".json")].isdigit())


def latest(store: Store, alias: str) -> AliasMove | None:
    versions = _versions(store, alias)
    return _read(store, alias, versions[-1]) if versions else None


def history(store: Store, alias: str) -> list[AliasMove]:
    versions = _versions(store, alias)
    keys = [_key(alias, v) for v in versions]
    entries = zip(keys, versions, store.read_many(keys), strict=True)
    return [parse(data, store.uri_of(k), alias, v) for k, v, data in entries]


def pointed_at(store: Store, alias: str, target: str, since: datetime) -> bool:
    """Whether ``alias`` ever pointed at ``target`` in a move made after ``since``: entries are read newest
    first and only back to ``since`` minus ``CLOCK_SKEW`` (a move to a record cannot predate it), so the
    cost follows recent moves, not the alias's whole history."""
    for version in reversed(_versions(store, alias)):
        move = _read(store, alias, version)
        if move.target == target:
            return True
        if utc(move.moved_at) < since - CLOCK_SKEW:
            return False
    return False


def names(store: Store) -> list[str]:
    return store.list(ALIASES)


def current(store: Store, prefix: str = "", compact_after: int | None = None) -> dict[str, AliasMove]:
    """``{alias: its latest entry}`` for every alias whose name starts with ``prefix``, from one listing of
    all aliases and the alias snapshot (see ``snapshots``), reading only the latest entries it lacks
    (concurrently); when it lacked ``compact_after`` (default ``snapshots.COMPACT_AFTER``) or more, a fresh
    alias snapshot (of every alias's latest entry) is written for the next reader."""
    tree = store.list_tree(ALIASES)
    versions: dict[str, int] = {}
    for key in tree:
        alias, _, name = key.partition("/")
        stem = name[: -len(".json")]
        if name.endswith(".json") and stem.isdigit() and usable(alias):  # a stray folder name is skipped
            versions[alias] = max(versions.get(alias, 0), int(stem))
    latest = {a: _key(a, v)[len(ALIASES) + 1:] for a, v in versions.items()}  # alias: "<alias>/<version>.json"
    verifiable = any(info.md5 for info in tree.values())
    cached = snapshots.vouched(snapshots.read_latest(store, ALIAS_SNAPSHOTS) if verifiable else {},
                               {k: tree[k] for k in latest.values()})
    missing = [k for k in latest.values() if k not in cached]
    raw = {**cached, **dict(zip(missing, store.read_many([f"{ALIASES}/{k}" for k in missing]), strict=True))}
    if verifiable and missing and len(missing) >= (compact_after or snapshots.COMPACT_AFTER):
        snapshots.write(store, raw, ALIAS_SNAPSHOTS)
    return {a: parse(raw[k], store.uri_of(f"{ALIASES}/{k}"), a, versions[a]) for a, k in latest.items()
            if a.startswith(prefix)}


class AliasMoved(RegistryError):
    """A compare-and-swap move (``expect``) found the alias pointing elsewhere: someone moved it first."""


def move(store: Store, alias: str, target: str, max_attempts: int = 1000, unless_current: bool = False,
         expect: str | None = None, reason: str | None = None) -> AliasMove:
    """Point ``alias`` at ``target`` by appending the next version (compare-and-swap on the version).

    With ``unless_current``, a move that finds ``alias`` already at ``target`` (another writer finishing
    the same publish got there first) returns that entry instead of appending a repeat. With ``expect``,
    the move happens only while ``alias`` points at ``expect``: if another writer moved it first, this
    one raises ``AliasMoved`` rather than chaining after them. A write whose reply was lost is not a
    conflict either: the store finds its own bytes (``Store.create``). ``reason`` goes into the entry."""
    validate_name(alias, "alias")
    current = latest(store, alias)
    for attempt in range(max_attempts):
        if unless_current and current is not None and current.target == target:
            return current
        if expect is not None and (current.target if current else None) != expect:
            raise AliasMoved(f"alias {alias!r} points at {current.target if current else 'nothing'} (version "
                             f"{current.version if current else 0}), not at {expect}; it was not moved")
        version = (current.version if current else 0) + 1
        entry = AliasMove(alias=alias, version=version, target=target,
                          previous=current.target if current else None,
                          moved_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"), reason=reason)
        fields = {k: v for k, v in asdict(entry).items() if k != "reason" or v is not None}  # old readers: no key
        try:
            store.create(_key(alias, version), json.dumps(fields, sort_keys=True).encode())
            return entry
        except AlreadyExists:
            current = _read(store, alias, version)  # someone else moved it first: chain after them
            if attempt >= 4:
                time.sleep(random.uniform(0, 0.005))  # jitter under heavy contention, so racers spread out
    raise Contended(f"alias {alias!r}: gave up after {max_attempts} contended attempts; try again")
