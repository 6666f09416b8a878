"""``registry check``: is the registry whole? Every problem found, nothing changed (fsck for the store).

Checked, from the objects themselves:

* records: every file parses as a record and holds the id its name says; every link (parent,
  aligned_to) points at an existing record;
* artifacts: every record's artifact exists and has the SHA-256 the record holds; every object under
  ``artifacts/`` named after a hash holds bytes with that hash (a planted or corrupted object);
* adapters: every site prior stored as an adapter (``config["method"] == "adapter"``) names its core
  (``config["core"]``: id and hash), that core record exists, holds that artifact hash and is the site
  prior's first parent, and the core's artifact is whole (else the adapter cannot be loaded either);
* aliases: versions run 1, 2, ..., n without a gap; each entry parses, names its own alias and
  version, chains (its ``previous`` is the target before it) and targets an existing record;
* snapshots: each matches its digest, and each row equals the record file of that id (alias
  snapshots: the alias entry file of that key).

``repair`` may only rebuild snapshots (they are caches): it deletes the snapshots with problems and,
on S3, writes one fresh snapshot of the record files (the next ``fleet status`` rewrites the alias
snapshot). Records, artifacts and aliases are never changed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.errors import RegistryError
from pipeline.hashing import file_sha256
from pipeline.registry import aliases, record_files, snapshots
from pipeline.registry.records import Record, prior_method
from pipeline.registry.registry import Registry
from pipeline.registry.snapshots import read_snapshot
from pipeline.storage import Store, usable
from pipeline.storage.layout import ALIAS_SNAPSHOTS, ALIASES, ARTIFACTS, RECORDS, SNAPSHOTS

HASH_NAME = re.compile(r"([0-9a-f]{64})(?:-[0-9a-f]+)?(?:\.[A-Za-z0-9]+)?")


@dataclass(frozen=True)
class Problem:
    area: str  # records, links, artifacts, adapters, aliases, snapshots
    key: str  # the object (store key) it is about
    message: str


@dataclass
class Report:
    store: str
    counts: dict = field(default_factory=dict)  # objects checked, per area
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"store": self.store, "ok": self.ok, "counts": self.counts,
                "problems": [asdict(p) for p in self.problems], "repaired": self.repaired}


def check(registry: Registry, hashes: bool = True) -> Report:
    """Every problem in ``registry`` (see the module docstring); ``hashes=False`` skips reading artifacts."""
    store = registry.store
    report = Report(store.uri)
    say = lambda area, key, message: report.problems.append(Problem(area, key, message))  # noqa: E731

    listing, stray = record_files.listing(registry.store)
    raw = dict(zip(listing, store.read_many([f"{RECORDS}/{i}.json" for i in listing]), strict=True))
    for name in stray:
        say("records", f"{RECORDS}/{name}", "not a record file name (<record id>.json): every reader skips it (a "
                                            "copy made by hand or by a sync tool? move it out of the registry)")
    records: dict[str, Record] = {}
    for record_id, data in raw.items():
        key = f"{RECORDS}/{record_id}.json"
        try:
            records[record_id] = Record.from_json(data, store.uri_of(key), record_id)
        except (RegistryError, ValueError) as error:
            say("records", key, str(error))
    report.counts["records"] = len(raw) + len(stray)

    for record in records.values():
        for link in [*record.parents, *([record.aligned_to] if record.aligned_to else [])]:
            if link not in records:
                say("links", f"{RECORDS}/{record.id}.json", f"links to {link!r}, which is not a readable record")

    broken = _check_artifacts(registry, records, hashes, say, report)
    _check_adapters(records, broken, say, report)
    entries = _check_aliases(store, records, say, report)
    _check_snapshots(store, raw, say, report)
    _check_snapshots(store, entries, say, report, ALIAS_SNAPSHOTS, "alias entry files")
    return report


def _check_artifacts(registry: Registry, records: dict[str, Record], hashes: bool, say,
                     report: Report) -> set[str]:
    """Check every record's artifact and every object under ``artifacts/``; return the ids of the records whose
    artifact is missing or (with ``hashes``) holds other bytes."""
    store = registry.store
    broken: set[str] = set()
    present = set(store.list(ARTIFACTS))
    found: dict[str, str] = {}  # key -> SHA-256 of its bytes

    def digest(key: str) -> str:
        if key not in found:
            with tempfile.TemporaryDirectory() as tmp:
                store.get_file(key, Path(tmp) / "object")
                found[key] = file_sha256(Path(tmp) / "object")
        return found[key]

    for record in records.values():
        if record.artifact is None:
            continue
        try:
            key = registry.artifact_key(record)
        except RegistryError as error:
            say("artifacts", f"{RECORDS}/{record.id}.json", str(error))
            broken.add(record.id)
            continue
        if not key.startswith(f"{ARTIFACTS}/") or key.split("/", 1)[1] not in present:
            say("artifacts", key, f"missing: record {record.id} points at it")
            broken.add(record.id)
        elif hashes and digest(key) != record.hash:
            say("artifacts", key,
                f"has SHA-256 {digest(key)[:12]}... but record {record.id} holds {record.hash[:12]}...")
            broken.add(record.id)
    if hashes:
        for name in sorted(present):
            match = HASH_NAME.fullmatch(name)
            key = f"{ARTIFACTS}/{name}"
            if match and digest(key) != match.group(1):
                say("artifacts", key, f"its name says SHA-256 {match.group(1)[:12]}... but its bytes hash to "
                                      f"{digest(key)[:12]}... (planted or corrupted; nothing refers to it safely)")
    report.counts["artifacts"] = len(present)
    return broken


def _check_adapters(records: dict[str, Record], broken: set[str], say, report: Report) -> None:
    """Check every adapter site prior against its core (see the module docstring); ``broken``: the records whose
    artifact is missing or damaged."""
    adapters = [r for r in records.values() if r.kind == "site-prior" and prior_method(r) == "adapter"]
    for record in adapters:
        key, core = f"{RECORDS}/{record.id}.json", record.config.get("core")
        if not (isinstance(core, dict) and isinstance(core.get("id"), str) and isinstance(core.get("hash"), str)):
            say("adapters", key, f"site prior {record.id} is an adapter but its config names no core (id and hash)")
            continue
        core_id, core_hash = core["id"], core["hash"]
        if core_id not in records:
            say("adapters", key, f"site prior {record.id} is an adapter of core {core_id!r}, which is not a "
                                 "readable record")
            continue
        held = records[core_id].hash
        if held != core_hash:
            say("adapters", key, f"site prior {record.id} is an adapter of core {core_id} with artifact hash "
                                 f"{core_hash[:12]}... but that record holds "
                                 f"{f'{held[:12]}...' if held else 'no artifact'}: they cannot be composed")
        if record.parents[:1] != [core_id]:
            say("adapters", key, f"site prior {record.id} is an adapter of core {core_id} but its first parent is "
                                 f"{record.parents[0] if record.parents else 'none'}")
        if core_id in broken:
            say("adapters", key, f"site prior {record.id} is an adapter of core {core_id}, whose artifact is "
                                 "missing or damaged: the site prior cannot be loaded")
    report.counts["adapters"] = len(adapters)


def _check_aliases(store: Store, records: dict[str, Record], say, report: Report) -> dict[str, bytes]:
    """Check every alias; return ``{"<alias>/<version>.json": bytes}`` of its entries (for the alias snapshots)."""
    names = aliases.names(store)
    moves, entries = 0, {}
    for alias in names:
        folder = f"{ALIASES}/{alias}"
        if not usable(alias):
            say("aliases", folder, "not an alias name: every reader skips it")
            continue
        listed = store.list(folder)
        versions = sorted(int(n[:-5]) for n in listed if n.endswith(".json") and n[:-5].isdigit())
        for n in listed:
            if not (n.endswith(".json") and n[:-5].isdigit() and usable(n)):
                say("aliases", f"{folder}/{n}", "not an alias entry name (<version>.json)")
        if versions != list(range(1, len(versions) + 1)):
            say("aliases", folder, f"versions {versions[:10]} are not 1..{len(versions)} without gaps")
        previous = None
        for version in versions:
            key = f"{folder}/{version:0{aliases.VERSION_DIGITS}d}.json"
            moves += 1
            try:
                entries[key[len(ALIASES) + 1:]] = data = store.read(key)
                move = aliases.parse(data, store.uri_of(key), alias, version)
            except (RegistryError, FileNotFoundError) as error:
                say("aliases", key, str(error))
                previous = None
                continue
            if move.previous != previous:
                say("aliases", key, f"previous is {move.previous!r} but the entry before points at {previous!r}")
            if move.target not in records:
                say("aliases", key, f"points at {move.target!r}, which is not a readable record")
            previous = move.target
    report.counts["aliases"], report.counts["alias_moves"] = len(names), moves
    return entries


def _check_snapshots(store: Store, raw: dict[str, bytes], say, report: Report, folder: str = SNAPSHOTS,
                     files: str = "record files") -> None:
    names = [n for n in store.list(folder) if n.endswith(".parquet")]
    for name in [n for n in names if not usable(n)]:
        say("snapshots", f"{folder}/{name}", "not a snapshot name: every reader skips it")
    names = [n for n in names if usable(n)]
    for name in names:
        key = f"{folder}/{name}"
        try:
            table = read_snapshot(store.read(key))
            rows = dict(zip(table["id"].to_pylist(), table["record"].to_pylist(), strict=True))
        except (pa.ArrowException, KeyError) as error:
            say("snapshots", key, f"not a readable snapshot ({error})")
            continue
        if snapshots.name_of(rows) != name:
            say("snapshots", key, "its content does not match its name (digest)")
        wrong = sorted(i for i, data in rows.items() if raw.get(i) != data)
        if wrong:
            say("snapshots", key, f"{len(wrong)} row(s) differ from the {files} or have none, first {wrong[0]!r}")
    report.counts["snapshots"] = report.counts.get("snapshots", 0) + len(names)


def repair(registry: Registry, report: Report) -> None:
    """Delete the snapshots ``report`` found problems in and, on S3 (local stores read the record files),
    write one fresh snapshot of the record files that parse. Nothing else is touched."""
    store = registry.store
    for problem in report.problems:
        if problem.area == "snapshots" and problem.key not in report.repaired:
            store.delete(problem.key)
            report.repaired.append(problem.key)
    if store.is_local:
        return
    good = {}
    for record_id, data in record_files.read(registry.store).items():  # the listing's record files (verified rows)
        try:
            Record.from_json(data, record_id, record_id)
        except (RegistryError, ValueError):
            continue
        good[record_id] = data
    if good:
        snapshots.write(store, good)
        report.repaired.append(f"{SNAPSHOTS}/{snapshots.name_of(good)}")
