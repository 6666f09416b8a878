"""``flowprior registry`` queries: records and aliases read from the registry and printed as a table or JSON
(``ls``, ``show``, ``lineage``, ``aligned``, ``stale``, ``alias``)."""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import asdict, fields
from typing import Callable

from pipeline.cli.common import open_existing_store, table
from pipeline.errors import RegistryError
from pipeline.formatting import size
from pipeline.registry import MissingRecord, Record, Registry, aliases, record_files
from pipeline.registry.aliases import AliasMove
from pipeline.registry.query import Where, select
from pipeline.registry.records import artifact_bytes, prior_method

COLUMNS = ("id", "kind", "site", "created", "links", "artifact", "fingerprint", "tags")
ALIAS_COLUMNS = ("alias", "version", "target", "previous", "moved", "reason")
RECORD_FIELDS = tuple(f.name for f in fields(Record))
SITE_ALIASES = ("encoder.", "site-prior.", "site-check.")  # every site step moves its site's alias of its kind

Query = Callable[[argparse.Namespace, Registry], tuple[list[Record], str]]  # a query: (records, text if none)


def _artifact(record: Record) -> str:
    """The artifact cell: its hash (first 12 digits), its size and, for a site prior, how the artifact holds the
    prior (``3f2a9c1b0d4e 150.2 kB adapter``); ``-`` for a record without an artifact."""
    if record.hash is None:
        return "-"
    return " ".join([record.hash[:12], size(artifact_bytes(record)), *filter(None, [prior_method(record)])])


def _row(record: Record) -> tuple[str, ...]:
    links = [f"parent={p}" for p in record.parents] + ([f"aligned_to={record.aligned_to}"] if record.aligned_to else [])
    return (record.id, record.kind, record.site or "-", record.created_at[:19].replace("T", " "),
            ", ".join(links) or "-", _artifact(record), (record.fingerprint or "-")[:12],
            " ".join(f"{k}={v}" for k, v in sorted(record.tags.items())) or "-")


def slim(value: object) -> object:
    """``value`` without the training histories it holds (a list under a key naming a history, at any depth:
    an encoder's ``history`` and ``baseline_history``, a sweep's trials' ``history``): thousands of lines that
    ``ls --json`` leaves out unless ``--full``."""
    if isinstance(value, dict):
        return {k: slim(v) for k, v in value.items() if not (isinstance(v, list) and "history" in k.lower())}
    if isinstance(value, list):
        return [slim(v) for v in value]
    return value


def record_fields(text: str) -> list[tuple[str, ...]]:
    """``--fields id,kind,metrics.fm_loss``: dotted paths into a record, each starting with a record field."""
    paths = [tuple(part.strip().split(".")) for part in text.split(",") if part.strip()]
    for path in paths:
        if path[0] not in RECORD_FIELDS or not all(path):
            raise argparse.ArgumentTypeError(f"unknown field {'.'.join(path)!r}: a record field "
                                             f"({', '.join(RECORD_FIELDS)}), or a dotted path below one "
                                             "(metrics.heldout_fm)")
    if not paths:
        raise argparse.ArgumentTypeError("expected field names separated by commas, e.g. id,kind,metrics.heldout_fm")
    return paths


def _at(data: object, path: tuple[str, ...]) -> object:
    """The value at a dotted ``path`` in ``data``, or None where a record has none."""
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def pick(data: dict, paths: list[tuple[str, ...]]) -> dict:
    """The parts of ``data`` at ``paths``, nested as in ``data`` (null where a record has no such value)."""
    picked: dict = {}
    for path in paths:
        node = picked
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = _at(data, path)
    return picked


def _cell(data: dict, path: tuple[str, ...]) -> str:
    value = _at(data, path)
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def render(records: list[Record], as_json: bool, empty: str, paths: list[tuple[str, ...]] | None = None,
           full: bool = False) -> str:
    """A JSON list of records for scripts (histories left out unless ``full``; only ``paths`` if given), or an
    aligned table for people (of ``paths`` if given)."""
    data = [asdict(r) if full else slim(asdict(r)) for r in records]
    if as_json:
        return json.dumps([pick(d, paths) for d in data] if paths else data, indent=2, sort_keys=True)
    if not records:
        return empty
    if paths:
        return table(tuple(".".join(p) for p in paths), [tuple(_cell(d, p) for p in paths) for d in data])
    return table(COLUMNS, [_row(r) for r in records])


def unknown(what: str, name: str, known: set[str], registry: Registry) -> RegistryError:
    """The error for a ``what`` (site, alias, record) the registry has none of, naming the near ones it has."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    if close:
        hint = f"; did you mean {' or '.join(close)}?"
    elif known:
        hint = f" (it has {len(known)}: {', '.join(sorted(known)[:6])}{', ...' if len(known) > 6 else ''})"
    else:
        hint = " (it has none)"
    return RegistryError(f"no {what} {name} in the registry at {registry.store.uri}{hint}")


def known_sites(registry: Registry) -> set[str]:
    """The sites the registry has records of, from one listing of its aliases (each site step moves its site's
    alias), not by reading every record."""
    return {name.split(".", 1)[1] for name in aliases.names(registry.store) if name.startswith(SITE_ALIASES)}


def render_moves(moves: list[AliasMove], as_json: bool, empty: str) -> str:
    if as_json:
        return json.dumps([asdict(m) for m in moves], indent=2, sort_keys=True)
    rows = [(m.alias, str(m.version), m.target, m.previous or "-", m.moved_at[:19].replace("T", " "), m.reason or "-")
            for m in moves]
    return table(ALIAS_COLUMNS, rows) if rows else empty


def where(text: str) -> Where:
    try:
        return Where.parse(text)
    except RegistryError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_ls(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    records = registry.records()
    if args.site is not None and all(r.site != args.site for r in records):
        raise unknown("site", args.site, {r.site for r in records if r.site}, registry)
    records = [r for r in records if args.kind in (None, r.kind) and args.site in (None, r.site)]
    return select(records, args.where), "no records"


def cmd_show(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return [registry.get(args.id)], ""


def cmd_lineage(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return registry.lineage(args.id), ""


def cmd_aligned(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    prior = registry.aligned(args.site)
    if prior is None and args.site not in (sites := known_sites(registry)):
        raise unknown("site", args.site, sites, registry)
    return ([prior] if prior else []), f"site {args.site} has no current encoder in the registry"


def cmd_stale(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return registry.stale(args.prior), ("no stale sites: every current encoder is aligned to the current core "
                                        "prior's family")



def cmd_alias(args: argparse.Namespace) -> int:
    registry = Registry(open_existing_store(args))
    if args.alias_action == "ls":
        moves, empty = sorted(registry.current().values(), key=lambda m: m.alias), "no aliases"
    elif args.alias_action == "history":
        moves, empty = registry.alias_history(args.name), ""
        if not moves:
            raise unknown("alias", args.name, set(aliases.names(registry.store)), registry)
    else:
        moves, empty = [registry.move_alias(args.name, args.id, reason=args.reason, expect=args.expect)], ""
    print(render_moves(moves, args.json, empty))
    return 0


def handle(args: argparse.Namespace) -> int:
    registry = Registry(open_existing_store(args))
    try:
        records, empty = args.query(args, registry)
    except MissingRecord as error:  # a mistyped id: name the near ones (one listing of the record files)
        asked = getattr(args, "id", None) or getattr(args, "prior", None)
        ids = sorted(record_files.listing(registry.store)[0]) if asked else []
        close = difflib.get_close_matches(asked, ids, n=3, cutoff=0.9) if asked else []
        if not close:
            raise
        raise MissingRecord(f"{error}; did you mean {' or '.join(close)}?") from None
    if args.command_name == "show":  # one record, in full, as its file holds it (with or without --json)
        print(json.dumps(asdict(records[0]), indent=2, sort_keys=True))
    else:
        print(render(records, args.json, empty, args.fields, args.full))
    return 0
