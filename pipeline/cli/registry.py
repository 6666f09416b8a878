"""``flowprior registry ...``: what is in the registry, where it came from, what went stale."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pipeline.cli.common import add_store_arguments, open_store
from pipeline.registry import KINDS, Record, Registry

COLUMNS = ("id", "kind", "site", "created", "links", "artifact hash", "fingerprint")


def _row(record: Record) -> tuple[str, ...]:
    links = [f"parent={p}" for p in record.parents] + ([f"aligned_to={record.aligned_to}"] if record.aligned_to else [])
    return (record.id, record.kind, record.site or "-", record.created_at[:19].replace("T", " "),
            ", ".join(links) or "-", (record.hash or "-")[:12], (record.fingerprint or "-")[:12])


def render(records: list[Record], as_json: bool, empty: str) -> str:
    """A JSON list of records for scripts, or an aligned table for people."""
    if as_json:
        return json.dumps([asdict(r) for r in records], indent=2, sort_keys=True)
    if not records:
        return empty
    lines = [COLUMNS, *map(_row, records)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def cmd_ls(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return registry.records(kind=args.kind, site=args.site), "no records"


def cmd_show(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return [registry.get(args.id)], ""


def cmd_lineage(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return registry.lineage(args.id), ""


def cmd_aligned(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    prior = registry.aligned(args.site)
    return ([prior] if prior else []), f"site {args.site} has no current encoder in the registry"


def cmd_stale(args: argparse.Namespace, registry: Registry) -> tuple[list[Record], str]:
    return registry.stale(args.prior), "no stale sites: every current encoder is aligned to the current core prior's family"


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.registry.check import check, repair

    store = open_store(args)
    registry = Registry(store)
    report = check(registry, hashes=not args.skip_hashes)
    if args.repair and any(p.area == "snapshots" for p in report.problems):
        repair(registry, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"registry at {store.uri}: " + ", ".join(f"{n} {area.replace('_', ' ')}" for area, n in report.counts.items()))
        for p in report.problems:
            print(f"  {p.area:9s} {p.key}: {p.message}")
        for key in report.repaired:
            print(f"  repaired  {key}")
        print("ok: no problems" if report.ok else f"{len(report.problems)} problem(s)"
              + (" (snapshots rebuilt; rerun to confirm)" if report.repaired else ""))
    return 0 if report.ok else 1


def handle(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store.is_local and not store.backend.root.is_dir():
        raise ValueError(f"no store at {store.uri} (nothing has been published there; check --store or $FLOWPRIOR_STORE)")
    registry = Registry(store)
    records, empty = args.query(args, registry)
    if args.command_name == "show" and not args.json:
        print(json.dumps(asdict(records[0]), indent=2, sort_keys=True))
    else:
        print(render(records, args.json, empty))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "registry", help="query the registry of priors, site priors, encoders and sweeps",
        description="Query the registry kept under the store: records are immutable and carry their links "
                    "(parent, aligned_to, trained_on data fingerprint). Add --json for a JSON list of records.")
    queries = parser.add_subparsers(dest="command_name", required=True, metavar="QUERY")

    def query(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = queries.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print a JSON list of records")
        add_store_arguments(sub)
        sub.set_defaults(handler=handle, query=handler)
        return sub

    ls = query("ls", cmd_ls, "list records, oldest first")
    ls.add_argument("--kind", choices=KINDS, help="only records of this kind")
    ls.add_argument("--site", help="only records of this site")
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
