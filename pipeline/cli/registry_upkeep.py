"""``flowprior registry`` upkeep: ``check`` that the registry is whole, ``gc`` what nothing references,
``mirror`` its records to MLflow."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pipeline.cli.common import open_existing_store, table
from pipeline.cli.registry_records import render
from pipeline.errors import TrackingError
from pipeline.registry import Registry
from pipeline.registry.query import select


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
