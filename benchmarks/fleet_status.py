"""``flowprior fleet status`` on a large fleet, on local disk and on a real S3 server (SeaweedFS on 127.0.0.1).

    python benchmarks/fleet_status.py [--sites 1000] [--json out.json]

It builds a registry of ``--sites`` sites with 10 records each, as a fleet's history leaves them:
per site two checks (against two core priors), two site priors, six encoders, and every one's
alias move (3 aliases and 10 alias entries per site), plus two core priors and ten sweeps of a
tenth of the sites each; after each wave of sites, ``record_files.compact(store)``, as a fleet command (``site
run`` over 64 sites or more) does at its end. Then, per backend, it times ``fleet_status`` (what the
command runs): the first call of a fresh process (cold), the best of three calls after it, with the time
split into the records read and the aliases read, and the first call as it would be without any snapshot
(every record object and latest alias entry read; what a cold call cost before fleet commands compacted).
It prints the table and the S3 / local ratios, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support (the SeaweedFS launcher)

from pipeline.registry import Registry, record_files  # noqa: E402
from pipeline.registry.fleet import fleet_status  # noqa: E402
from pipeline.storage import Store  # noqa: E402
from pipeline.storage.layout import ALIASES  # noqa: E402

from machine import machine, on_local_and_s3  # benchmarks/machine.py, beside this script  # noqa: E402

CHECK = {"probe_gain": 0.04, "fm_ratio": 1.1, "nll_gap": 0.2, "mmd": 0.01}


def populate_site(registry: Registry, site: str, cores: list[str]) -> None:
    """10 records and 10 alias moves: per core prior a check, a site prior and three encoders."""
    for core in cores:
        registry.register("site-check", site=site, parents=[core], config={"decision": "finetune"}, metrics=CHECK)
        site_prior = registry.register("site-prior", site=site, parents=[core], fingerprint="b" * 64)
        for lam in (0.001, 0.002, 0.004):
            registry.register("encoder", site=site, parents=[site_prior.id], aligned_to=site_prior.id,
                              config={"lambda": lam}, metrics={"recon": 0.1, "knn_nll": 4.2})


def populate(store_uri: str, sites: int, threads: int) -> float:
    registry = Registry(Store.open(store_uri))
    start = time.perf_counter()
    core1 = registry.register("prior", fingerprint="a" * 64)
    names = [f"site{i:05d}" for i in range(sites)]
    with ThreadPoolExecutor(threads) as pool:  # first every site against core 1, then core 2 arrives
        list(pool.map(lambda s: populate_site(registry, s, [core1.id]), names))
        record_files.compact(registry.store)  # as the fleet command that registered them does at its end
        core2 = registry.register("prior", parents=[core1.id], fingerprint="c" * 64)
        list(pool.map(lambda s: populate_site(registry, s, [core2.id]), names))
    tenth = max(1, sites // 10)
    for i in range(10):
        swept = names[i * tenth:(i + 1) * tenth]
        registry.register("sweep", parents=[core2.id], config={"choices": {
            s: {"mode": "align", "lam": 0.002, "lr": 1e-3, "draws": 4, "objective": 4.3, "feasible": True}
            for s in swept}})
    record_files.compact(registry.store)
    return time.perf_counter() - start


def timed(store_uri: str) -> dict:
    registry = Registry(Store.open(store_uri))
    start = time.perf_counter()
    registry.records()
    records = time.perf_counter() - start
    start = time.perf_counter()
    registry.current()
    aliases = time.perf_counter() - start
    start = time.perf_counter()  # what the aliases cost without the alias snapshot: every latest entry read
    tree = registry.store.list_tree(ALIASES)
    latest = {k.split("/")[0]: k for k in sorted(tree)}
    registry.store.read_many([f"{ALIASES}/{k}" for k in latest.values()])
    aliases_read = time.perf_counter() - start
    start = time.perf_counter()
    fleet = fleet_status(registry)
    return {"fleet_status_s": time.perf_counter() - start, "records_s": records, "aliases_s": aliases,
            "aliases_without_snapshot_s": aliases_read,
            "sites": len(fleet.sites), "stale": len(fleet.stale)}


def without_snapshots(store_uri: str) -> float:
    """``fleet_status``'s time when no snapshot is read or written: every record and latest alias entry read."""
    from pipeline.registry import snapshots

    saved = snapshots.read_latest, snapshots.write
    snapshots.read_latest, snapshots.write = (lambda *a, **k: {}), (lambda *a, **k: None)
    try:
        start = time.perf_counter()
        fleet_status(Registry(Store.open(store_uri)))
        return time.perf_counter() - start
    finally:
        snapshots.read_latest, snapshots.write = saved


def measure(store_uri: str, sites: int, threads: int) -> dict:
    populate_s = populate(store_uri, sites, threads)
    registry = Registry(Store.open(store_uri))
    start = time.perf_counter()
    first = fleet_status(registry)  # cold: what the fleet commands' compaction left
    cold = time.perf_counter() - start
    warm = min((timed(store_uri) for _ in range(3)), key=lambda r: r["fleet_status_s"])
    assert len(first.sites) == warm["sites"] == sites and warm["stale"] == 0  # every site moved to core 2's family
    return {"populate_s": populate_s, "records": len(registry.records()), "alias_entries":
            len(registry.store.list_tree("registry/aliases")), "fleet_status_cold_s": cold,
            "fleet_status_without_snapshots_s": without_snapshots(store_uri), **warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16, help="threads registering the fleet")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "fleet_status.json"))
    args = parser.parse_args()

    results = on_local_and_s3(lambda uri: measure(uri, args.sites, args.threads))

    local = results["local"]
    rows = [("registering the fleet (s)", "populate_s"),
            ("fleet status, first call (cold, after the compaction) (s)", "fleet_status_cold_s"),
            ("fleet status without any snapshot (s)", "fleet_status_without_snapshots_s"),
            ("fleet status, best of 3 (s)", "fleet_status_s"),
            ("  of which: the records (s)", "records_s"),
            ("  of which: the aliases (s)", "aliases_s"),
            ("the aliases without the alias snapshot (s)", "aliases_without_snapshot_s")]
    print(f"\n{local['sites']} sites, {local['records']} records, {local['alias_entries']} alias entries, "
          f"{local['stale']} stale")
    print(f"{'':56} {'local':>8} {'S3':>8} {'S3/local':>9}")
    for label, key in rows:
        print(f"{label:56} {local[key]:8.2f} {results['s3'][key]:8.2f} {results['s3'][key] / local[key]:9.1f}")
    results["machine"] = machine()
    results["settings"] = {"sites": args.sites, "records_per_site": 10}
    print(f"\nmachine: {results['machine']}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
