"""``flowprior registry ...``: what is in the registry, where it came from, what went stale."""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import asdict, fields

from pipeline.cli.common import add_mlflow_argument, add_store_arguments, days, open_existing_store, table
from pipeline.errors import RegistryError, TrackingError
from pipeline.registry import KINDS, MissingRecord, Record, Registry, aliases
from pipeline.registry.aliases import AliasMove
from pipeline.registry.query import FIELDS, TIMES, Where, select

COLUMNS = ("id", "kind", "site", "created", "links", "artifact hash", "fingerprint", "tags")
ALIAS_COLUMNS = ("alias", "version", "target", "previous", "moved", "reason")
RECORD_FIELDS = tuple(f.name for f in fields(Record))
SITE_ALIASES = ("encoder.", "site-prior.", "site-check.")  # every site step moves its site's alias of its kind


def _row(record: Record) -> tuple[str, ...]:
    links = [f"parent={p}" for p in record.parents] + ([f"aligned_to={record.aligned_to}"] if record.aligned_to else [])
    return (record.id, record.kind, record.site or "-", record.created_at[:19].replace("T", " "),
            ", ".join(links) or "-", (record.hash or "-")[:12], (record.fingerprint or "-")[:12],
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


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.registry.check import check, repair

    store = open_existing_store(args)
    registry = Registry(store)
    report = check(registry, hashes=not args.skip_hashes)
    if args.repair and any(p.area == "snapshots" for p in report.problems):
        repair(registry, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        counts = ", ".join(f"{n} {area.replace('_', ' ')}" for area, n in report.counts.items())
        print(f"registry at {store.uri}: {counts}")
        for p in report.problems:
            print(f"  {p.area:9s} {p.key}: {p.message}")
        for key in report.repaired:
            print(f"  repaired  {key}")
        print("ok: no problems" if report.ok else f"{len(report.problems)} problem(s)"
              + (" (snapshots rebuilt; rerun to confirm)" if report.repaired else ""))
    return 0 if report.ok else 1


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


def cmd_gc(args: argparse.Namespace) -> int:
    from pipeline.registry.retention import collect, usable_key

    store = open_existing_store(args)
    result = collect(Registry(store), args.keep_days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "bytes": result.bytes, "stopped": result.stopped,
                          "deleted": result.deleted, "doomed": [asdict(d) for d in result.doomed],
                          "kept_for_unreadable": result.kept}, indent=1))
        return 0
    rows = [(d.what, d.key, f"{d.bytes / 2**20:,.2f}", f"{d.age_days:.1f}", d.why) for d in result.doomed]
    if rows:
        print(table(("what", "key", "MiB", "age (days)", "why"), rows))
    for key, kept in result.kept.items():
        print(f"kept {', '.join(kept)}: {store.uri_of(key) if usable_key(key) else key} refers to it and this "
              "flowprior cannot read that record file (a newer version's? see `flowprior registry check`)")
    print(f"{store.uri}: {verb} {len(result.doomed) if args.dry_run else len(result.deleted)} item(s), "
          f"{result.bytes / 2**20:,.2f} MiB, older than {args.keep_days:g} days; records and aliases are never deleted"
          + (f"; stopped early: {result.stopped}" if result.stopped else ""))
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from pipeline.tracking import Tracking

    tracking = Tracking.from_env()  # --mlflow, if given, is already in the environment (see cli.main)
    if tracking is None:
        raise TrackingError("registry mirror needs an MLflow server: --mlflow URI or $MLFLOW_TRACKING_URI")
    store = open_existing_store(args)
    registry = Registry(store)
    have = tracking.mirrored()
    records = [r for r in select(registry.records(), args.where) if r.id not in have]
    if args.dry_run:
        print(render(records, False, "nothing to copy"))
    else:
        for start in range(0, len(records), 50):
            tracking.mirror(records[start:start + 50], registry.artifact_uri)
            print(f"[registry mirror] {min(start + 50, len(records))}/{len(records)} records copied", flush=True)
    print(f"{store.uri}: {len(records)} record(s) {'to copy' if args.dry_run else 'copied'} to {tracking}; "
          f"{len(have)} were there already")
    return 0


def handle(args: argparse.Namespace) -> int:
    registry = Registry(open_existing_store(args))
    try:
        records, empty = args.query(args, registry)
    except MissingRecord as error:  # a mistyped id: name the near ones (one listing of the record files)
        asked = getattr(args, "id", None) or getattr(args, "prior", None)
        close = difflib.get_close_matches(asked, sorted(registry.record_files()[0]), n=3, cutoff=0.9) if asked else []
        if not close:
            raise
        raise MissingRecord(f"{error}; did you mean {' or '.join(close)}?") from None
    if args.command_name == "show":  # one record, in full, as its file holds it (with or without --json)
        print(json.dumps(asdict(records[0]), indent=2, sort_keys=True))
    else:
        print(render(records, args.json, empty, args.fields, args.full))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "registry", help="query the registry of priors, site priors, encoders and sweeps",
        description="Query the registry kept under the store: records are immutable and carry their links "
                    "(parent, aligned_to, trained_on data fingerprint). Add --json for a JSON list of records.")
    queries = parser.add_subparsers(dest="command_name", required=True, metavar="QUERY")

    def query(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = queries.add_parser(name, help=help_text, description=help_text)
        if name == "show":
            sub.add_argument("--json", action="store_true", help="print the record as a JSON object (as without "
                                                                 "--json: kept for scripts that pass it)")
        else:
            sub.add_argument("--json", action="store_true",
                             help="print a JSON list of records, without their training histories (config."
                                  "history, a sweep's trials' histories, ...; --full keeps them)")
            sub.add_argument("--fields", type=record_fields, metavar="A,B.C",
                             help="only these fields, dotted paths allowed (e.g. id,kind,metrics.heldout_fm): JSON "
                                  "objects nested as in the record with --json, else a table of them")
            sub.add_argument("--full", action="store_true", help="with --json: every field, histories included")
        add_store_arguments(sub)
        sub.set_defaults(handler=handle, query=handler)
        return sub

    ls = query("ls", cmd_ls, "list records, oldest first")
    ls.add_argument("--kind", choices=KINDS, help="only records of this kind")
    ls.add_argument("--site", help="only records of this site")
    ls.add_argument("--where", action="append", type=where, default=[], metavar="KEY=VALUE",
                    help=f"only records where KEY is VALUE (repeatable): a field ({', '.join(FIELDS)}), a time bound "
                         f"({', '.join(TIMES)}: ISO 8601, UTC unless zoned) or a tag (tag.KEY for one named like a "
                         "field); different keys must all hold, one key given twice matches either value")
    query("show", cmd_show, "one record in full").add_argument("id", help="record id")
    query("lineage", cmd_lineage, "a record and everything it derives from, back to its data").add_argument(
        "id", help="record id")
    query("aligned", cmd_aligned, "the prior a site's current encoder is aligned to").add_argument(
        "site", help="site id")
    fsck = queries.add_parser(
        "check", help="check that the registry is whole (exit 1 on any problem); changes nothing",
        description="Check every record (parses, id matches its file name, links resolve), every artifact "
                    "(exists, SHA-256 matches its record and its name), every alias (versions without gaps, a "
                    "chain of moves to existing records) and every snapshot (matches its digest and the record "
                    "files). Prints each problem with the object it is about; exit 1 if there is any. Nothing "
                    "is modified unless --repair, which may only rebuild snapshots (caches).")
    fsck.add_argument("--json", action="store_true", help="print the report as JSON")
    fsck.add_argument("--repair", action="store_true", help="delete snapshots with problems and write a fresh one "
                                                            "from the record files (nothing else is changed)")
    fsck.add_argument("--skip-hashes", action="store_true", help="do not download artifacts to check their hashes")
    add_store_arguments(fsck)
    fsck.set_defaults(handler=cmd_check)
    query("stale", cmd_stale, "sites whose current encoder is aligned to neither the current core prior nor "
                              "anything derived from it").add_argument(
        "--prior", help="compare against this prior id instead of the current core prior")

    gc = queries.add_parser(
        "gc", help="delete what nothing references: unreferenced artifacts, old run folders, superseded snapshots",
        description="Delete, once older than --keep-days: artifacts that no record points at, Ray Train/Tune run "
                    "folders under ray-runs/ (registered or abandoned; age is the last write under the folder, so "
                    "a running job's folder stays) and snapshots superseded by a newer one. Records and alias "
                    "entries are never deleted. Safe beside concurrent publishers: gc holds a lease while it lists "
                    "and deletes, and a publisher checks its artifact once no gc is running (and uploads it again "
                    "if a gc took it). --dry-run lists what would go and the bytes it would free.")
    gc.add_argument("--keep-days", type=days, default=7.0, metavar="N",
                    help="keep everything written in the last N days (default: %(default)g)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    gc.add_argument("--json", action="store_true", help="print the result as JSON")
    add_store_arguments(gc)
    gc.set_defaults(handler=cmd_gc)

    mirror = queries.add_parser(
        "mirror", help="copy to MLflow the records it does not have yet",
        description="Copy each record that the MLflow experiment has no run for (tag flowprior.id) as a finished "
                    "run, as registering does when MLflow tracking is on: after an MLflow outage, or to bring a "
                    "registry's history into MLflow when a team starts using it. The registry is not changed.")
    mirror.add_argument("--where", action="append", type=where, default=[], metavar="KEY=VALUE",
                        help="only records that match (as in `registry ls --where`)")
    mirror.add_argument("--dry-run", action="store_true", help="list what would be copied; copy nothing")
    add_mlflow_argument(mirror)
    add_store_arguments(mirror)
    mirror.set_defaults(handler=cmd_mirror)

    alias = queries.add_parser(
        "alias", help="list, show the history of, or move aliases (the current core prior, each site's current ...)",
        description="Aliases name what is current: `core` (the fleet's core prior) and `<kind>.<site>` (a site's "
                    "current encoder, site prior or check). Each is an append-only log of moves; `set` appends one "
                    "(a compare-and-swap on the log's next version), so a rollback is a move back to an older record, "
                    "and `registry stale` follows it.")
    actions = alias.add_subparsers(dest="alias_action", required=True, metavar="ACTION")
    alias_ls = actions.add_parser("ls", help="every alias and what it points at now",
                                  description="Every alias with its current target, version, time and reason.")
    history = actions.add_parser("history", help="every move of one alias, oldest first",
                                 description="Every move of one alias, oldest first, with its reason.")
    history.add_argument("name", help="alias name (e.g. core, encoder.R80711)")
    move = actions.add_parser(
        "set", help="point an alias at a record (a rollback: an older record)",
        description="Point an alias at a record: `core` takes a prior, `<kind>.<site>` a record of that kind and "
                    "site. The move is appended to the alias's log with its time and --reason. With --expect the "
                    "move happens only while the alias still points at that id (someone else's move in between "
                    "makes it fail, exit 2), so two operators cannot undo each other unknowingly.")
    move.add_argument("name", help="alias name (e.g. core, encoder.R80711)")
    move.add_argument("id", help="record id to point it at")
    move.add_argument("--reason", help="why (kept in the alias's history), e.g. 'roll back: core v7 NaNs at R80711'")
    move.add_argument("--expect", metavar="ID", help="move only if the alias points at this id now")
    for action in (alias_ls, history, move):
        action.add_argument("--json", action="store_true", help="print the entries as JSON")
        add_store_arguments(action)
    alias.set_defaults(handler=cmd_alias)
