"""Registry throughput on local disk and on a real S3 server (SeaweedFS on 127.0.0.1), side by side.

    python benchmarks/registry_throughput.py [--records 10000] [--writers 8] [--json out.json]

For each backend, in one run:

* ``write 1 proc``: records/s of one process registering records one after another;
* ``write N procs``: records/s of ``--writers`` processes at once, filling the registry up to
  ``--records`` records;
* ``ls``: records/s of ``Registry.records()`` over all ``--records`` records (best of 3), the
  call behind ``flowprior registry ls``; and the first such call after the writes, which reads
  every record object and writes the snapshot that later calls read instead; on S3 also the same
  ``ls`` with botocore's own timestamp parser (dateutil), which the client replaces by Python's;
* ``alias moves``: moves/s of ``--writers`` processes all moving one alias (full contention,
  every move a compare-and-swap).

It prints the table, the S3 / local ratios and the machine, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support (the SeaweedFS launcher)

from pipeline.registry import Registry  # noqa: E402
from pipeline.storage import Store  # noqa: E402

from machine import machine, on_local_and_s3  # benchmarks/machine.py, beside this script  # noqa: E402


def _writer(store_uri: str, count: int, alias: str | None, barrier, out) -> None:
    registry = Registry(Store.open(store_uri))
    ids = [registry.register("prior", make_current=False).id for _ in range(1)]
    barrier.wait()
    start = time.perf_counter()
    if alias is None:
        for i in range(count):
            registry.register("prior", config={"i": i}, make_current=False)
    else:
        for _ in range(count):
            registry.move_alias(alias, ids[0])
    out.put(time.perf_counter() - start)


def parallel(store_uri: str, writers: int, each: int, alias: str | None = None) -> float:
    """Operations per second of ``writers`` processes doing ``each`` operations at once."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store_uri, each, alias, barrier, out)) for _ in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for _ in procs:
        out.get()
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return writers * each / elapsed


def timed_ls(registry: Registry) -> float:
    start = time.perf_counter()
    registry.records()
    return time.perf_counter() - start


def measure(store_uri: str, records: int, writers: int) -> dict:
    registry = Registry(Store.open(store_uri))
    single = 300
    start = time.perf_counter()
    for i in range(single):
        registry.register("prior", config={"i": i}, make_current=False)
    write_1 = single / (time.perf_counter() - start)
    # the writers' setup registers one record each on top of their share
    each = max(1, (records - single - writers) // writers)
    write_n = parallel(store_uri, writers, each)
    start = time.perf_counter()
    total = len(registry.records())  # the first ls reads every record and writes a snapshot
    ls_cold = time.perf_counter() - start
    ls_times = [timed_ls(registry) for _ in range(3)]
    n = len(registry.records())
    ls_dateutil = min(ls_times)
    if not registry.store.is_local:  # side by side: the same ls with botocore's own (dateutil) timestamp parser
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

        slow = Registry(Store.open(store_uri))
        slow.store.backend.fs.session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=DEFAULT_TIMESTAMP_PARSER)
        ls_dateutil = min(timed_ls(slow) for _ in range(3))
    moves = parallel(store_uri, writers, 25, alias="bench")
    history = registry.alias_history("bench")
    assert [m.version for m in history] == list(range(1, len(history) + 1))
    return {"write_1_proc_per_s": write_1, "write_n_procs_per_s": write_n, "ls_records": n,
            "ls_seconds": min(ls_times), "ls_records_per_s": n / min(ls_times), "alias_moves_per_s": moves,
            "ls_seconds_dateutil_timestamps": ls_dateutil,
            "records_total": total, "ls_cold_seconds": ls_cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "registry_throughput.json"))
    args = parser.parse_args()

    results = on_local_and_s3(lambda uri: measure(uri, args.records, args.writers))

    rows = [("write, 1 process (records/s)", "write_1_proc_per_s"),
            (f"write, {args.writers} processes (records/s)", "write_n_procs_per_s"),
            (f"ls of {results['local']['ls_records']} records (records/s)", "ls_records_per_s"),
            (f"ls of {results['local']['ls_records']} records (s)", "ls_seconds"),
            ("  the same ls, botocore's dateutil timestamps (s)", "ls_seconds_dateutil_timestamps"),
            ("first ls after the writes: every record + snapshot (s)", "ls_cold_seconds"),
            (f"alias moves, {args.writers} processes contending (moves/s)", "alias_moves_per_s")]
    print(f"\n{'':52} {'local':>10} {'S3':>10} {'S3/local':>9}")
    for label, key in rows:
        local, s3 = results["local"][key], results["s3"][key]
        print(f"{label:52} {local:10.1f} {s3:10.1f} {s3 / local:9.2f}")
    results["machine"] = machine()
    results["settings"] = {"records": args.records, "writers": args.writers}
    print(f"\nmachine: {results['machine']}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
