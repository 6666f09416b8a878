"""``flowprior fleet status``: every site's encoder, prior, staleness, site prior (adapter or full, and its size),
last check and last sweep choice."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.common import add_store_arguments, open_existing_store, table
from pipeline.errors import SpecError
from pipeline.formatting import number, size

HEADER = ("site", "encoder", "aligned to", "stale", "site prior", "check", "sweep choice")


def _aligned(status, core: str | None) -> str:
    if status.aligned_to is None:
        return "-"
    if status.aligned_kind == "site-prior":
        of = "the current core" if status.aligned_core == core else status.aligned_core
        return f"site prior {status.aligned_to} (of {of})"
    return "the current core" if status.aligned_to == core else f"core {status.aligned_to}"


def _site_prior(status) -> str:
    """How the site's current site prior is stored: ``adapter 150.2 kB``, ``full 1.33 MB`` (``-``: none)."""
    if status.site_prior is None:
        return "-"
    return f"{status.site_prior_method or '?'} {size(status.site_prior_bytes)}"


def _row(status, fleet) -> tuple[str, ...]:
    from pipeline.registry.fleet import age

    now = fleet.read_at
    numbers = status.check_numbers
    check = "-" if status.check is None else (
        f"{status.decision} {age(status.check_at, now)} ago (probe {number(numbers.get('probe_gain'), '.1%')}, "
        f"fm_ratio {number(numbers.get('fm_ratio'), '.2f')})"
        + ("" if status.checked_against == fleet.core else " vs an older core"))
    choice = status.sweep_choice
    sweep = "-" if status.sweep is None else (f"{choice.get('mode', '?')} lambda {number(choice.get('lam'))} "
                                              f"{age(status.sweep_at, now)} ago")
    encoder = "-" if status.encoder is None else f"{status.encoder} ({age(status.encoder_at, now)})"
    stale = {None: "-", True: "STALE", False: "no"}[status.stale]
    return status.site, encoder, _aligned(status, fleet.core), stale, _site_prior(status), check, sweep


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.registry import Registry
    from pipeline.registry.fleet import age, fleet_status, site_prior_summary

    fleet = fleet_status(Registry(open_existing_store(args)))
    if args.json:
        print(json.dumps(fleet.to_dict(), indent=1, sort_keys=True))
        return 0
    core = "none" if fleet.core is None else f"{fleet.core} ({age(fleet.core_at, fleet.read_at)} old)"
    print(f"fleet at {fleet.store}: {len(fleet.sites)} site(s), {len(fleet.stale)} stale; current core prior {core}")
    if fleet.sites:
        print(f"site priors: {site_prior_summary(fleet)}")
        print(table(HEADER, [_row(s, fleet) for s in fleet.sites]))
    return 0


def report_folder(out: str) -> Path:
    """The local folder ``--out`` names, refusing a URI (the report is written to local disk, then copied)
    and a path that is, or lies under, an existing file; before anything is read or written."""
    if "://" in out:
        raise SpecError(f"--out {out}: the fleet report is a local folder; write it here and copy it with "
                        f"`aws s3 sync DIR {out}`")
    path = Path(out)
    for place in (path, *path.parents):
        if place.exists() and not place.is_dir():
            raise SpecError(f"--out {out}: {place} is a file; the fleet report is a folder (index.html and records/)")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.registry import Registry
    from pipeline.registry.fleet_report import write_fleet_report

    out = report_folder(args.out)
    print(f"fleet report: {write_fleet_report(Registry(open_existing_store(args)), out)}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("fleet", help="the whole fleet at a glance: status of every site",
                                 description="Views over every site the registry knows.")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="VIEW")
    status = sub.add_parser(
        "status", help="per site: current encoder, its prior, stale or not, site prior, last check, last sweep choice",
        description="One row per site known to the registry: its current encoder and when it was registered, the "
                    "prior it is aligned to (the core prior, or a site prior and the core it derives from), whether "
                    "it is stale (aligned outside the current core prior's family), how its current site prior is "
                    "stored (an adapter of its core or a full prior, and its size; the fleet's total in the store "
                    "above the table), its latest check's decision and numbers, and the setting the latest sweep "
                    "chose for it. Reads the registry once (records and aliases); --json for scripts.")
    status.add_argument("--json", action="store_true", help="print the status as JSON (ids, times, numbers)")
    add_store_arguments(status)
    status.set_defaults(handler=cmd_status)
    report = sub.add_parser(
        "report", help="write the fleet status as a static HTML page (opens from disk or S3, no server)",
        description="Write OUT/index.html: the status table, a site x core-prior matrix (red where stale) and the "
                    "lineage graph of the priors in use, with every linked record as OUT/records/<id>.json. All "
                    "links are relative and nothing loads from the network, so the folder opens from a laptop or "
                    "from S3 as it is (e.g. `aws s3 sync OUT s3://bucket/fleet/`).")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="local folder to write the page into (copy it to S3 with `aws s3 sync DIR s3://...`)")
    add_store_arguments(report)
    report.set_defaults(handler=cmd_report)
