"""``flowprior registry ...``: what is in the registry, where it came from, what went stale.

This module builds the command group's parser, one function per subcommand; the queries and their output
are in :mod:`pipeline.cli.registry_records`, ``check``/``gc``/``mirror`` in :mod:`pipeline.cli.registry_upkeep`.
"""

from __future__ import annotations

import argparse

from pipeline.cli.common import add_mlflow_argument, add_store_arguments, days
from pipeline.cli.registry_records import (
    Query,
    cmd_alias,
    cmd_aligned,
    cmd_lineage,
    cmd_ls,
    cmd_show,
    cmd_stale,
    handle,
    record_fields,
    where,
)
from pipeline.cli.registry_upkeep import cmd_check, cmd_gc, cmd_mirror
from pipeline.registry import KINDS
from pipeline.registry.query import FIELDS, TIMES


def _query(queries: argparse._SubParsersAction, name: str, handler: Query, help_text: str) -> argparse.ArgumentParser:
    """A subcommand printing the records ``handler`` finds (through :func:`handle`)."""
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


def _add_ls(queries: argparse._SubParsersAction) -> None:
    ls = _query(queries, "ls", cmd_ls, "list records, oldest first")
    ls.add_argument("--kind", choices=KINDS, help="only records of this kind")
    ls.add_argument("--site", help="only records of this site")
    ls.add_argument("--where", action="append", type=where, default=[], metavar="KEY=VALUE",
                    help=f"only records where KEY is VALUE (repeatable): a field ({', '.join(FIELDS)}), a time bound "
                         f"({', '.join(TIMES)}: ISO 8601, UTC unless zoned) or a tag (tag.KEY for one named like a "
                         "field); different keys must all hold, one key given twice matches either value")


def _add_show(queries: argparse._SubParsersAction) -> None:
    _query(queries, "show", cmd_show, "one record in full").add_argument("id", help="record id")


def _add_lineage(queries: argparse._SubParsersAction) -> None:
    _query(queries, "lineage", cmd_lineage, "a record and everything it derives from, back to its data").add_argument(
        "id", help="record id")


def _add_aligned(queries: argparse._SubParsersAction) -> None:
    _query(queries, "aligned", cmd_aligned, "the prior a site's current encoder is aligned to").add_argument(
        "site", help="site id")


def _add_check(queries: argparse._SubParsersAction) -> None:
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


def _add_stale(queries: argparse._SubParsersAction) -> None:
    _query(queries, "stale", cmd_stale, "sites whose current encoder is aligned to neither the current core prior "
                                        "nor anything derived from it").add_argument(
        "--prior", help="compare against this prior id instead of the current core prior")


def _add_gc(queries: argparse._SubParsersAction) -> None:
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


def _add_mirror(queries: argparse._SubParsersAction) -> None:
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


def _add_alias(queries: argparse._SubParsersAction) -> None:
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "registry", help="query the registry of priors, site priors, encoders and sweeps",
        description="Query the registry kept under the store: records are immutable and carry their links "
                    "(parent, aligned_to, trained_on data fingerprint). Add --json for a JSON list of records.")
    queries = parser.add_subparsers(dest="command_name", required=True, metavar="QUERY")
    for add in (_add_ls, _add_show, _add_lineage, _add_aligned, _add_check, _add_stale, _add_gc, _add_mirror,
                _add_alias):
        add(queries)
