"""``flowprior site run`` at fleet size: does the cost of a site stay flat from 8 to 512 sites?

    python benchmarks/fleet_scale.py [--sites 8 64 512] [--backends local s3] [--others 10000] [--compare-lookup]
                                     [--json out.json]

Synthetic fleets made from the bundled turbines: site ``i`` is turbine ``(i // 4) % 4``'s healthy 2015
readings, 3,000 rows resampled, as they are (``as-is``: reuse), restricted to its top quarter of wind speeds
(``windy``: finetune), moved by 1.5 standard deviations in every feature (``moved``: finetune) or by 8
(``far``: refit), variant ``i % 4``, so that all three decisions occur; small steps (a 20-step probe, 40
fine-tune or refit steps, 2 x 40 alignment steps).
Per backend (local disk, and SeaweedFS's S3 on 127.0.0.1) the store first gets a core prior and
``--others`` records of other sites (rounded up to a check, a site prior and an encoder per site). Then per
fleet size N, in a fresh driver process with an embedded Ray of this machine's cores, ``run_site_paths``
(what ``site run`` runs) takes every site through check -> fine-tune/refit -> align, and then again (a rerun that finds
every step done). Reported per N and backend:

* wall: ``run_site_paths``'s time (Ray's start-up excluded, reported apart);
* training: the sum of the steps' ``step_seconds`` (their own work: reading, measuring, training);
* overhead per site: ``wall x cores / N - training / N`` (scheduling, task start-up, store requests);
* the rerun's wall per site, and the driver's peak RSS for both;
* store requests per step, fresh and rerun (one site's steps run in-process through a counting store);
* with ``--compare-lookup``: the same fresh fleet under other site names, right after, without the driver's
  look-up of finished sites (``finished_path``; every site's chain of tasks runs), side by side.

Goals (issue #30): overhead per site at 512 at most 1.2x that at 8 and under 0.5 s; a rerun under
0.2 s per site; driver peak RSS under 1 GB at 512 sites.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from pipeline.datasets import la_haute_borne as lhb  # noqa: E402
from pipeline.registry import Registry  # noqa: E402
from pipeline.storage import Store  # noqa: E402

from machine import machine, on_local_and_s3  # benchmarks/machine.py, beside this script  # noqa: E402

TURBINES = ("R80711", "R80721", "R80736", "R80790")
VARIANTS = ("as-is", "windy", "moved", "far")
ROWS = 3000
SMALL = {"finetune": {"steps": 40, "refit_steps": 40, "probe_steps": 20, "log_every": 20},
         "alignment": {"lambda": 0.002, "steps": 40, "log_every": 20, "eval_points": 200}}

DRIVER = """
import json, sys, time
import ray
from pipeline.jobs import runtime, sites
from pipeline.jobs.sites import run_site_paths
from pipeline.registry import Registry
from pipeline.sites import load_site_spec
from pipeline.storage import Store

if sys.argv[2] == "no-lookup":  # what site run did before: every site's chain runs, finished or not
    sites._finished = lambda *args: None
store, specs = Store.open(sys.argv[1]), [load_site_spec(p) for p in sys.argv[3:]]
started = time.perf_counter()
ray.init(num_cpus={cores}, log_to_driver=False, include_dashboard=False)
startup = time.perf_counter() - started
rss_before = runtime.peak_rss_mib()
started = time.perf_counter()
paths = run_site_paths(specs, store, say=lambda line: None)
wall = time.perf_counter() - started
failed = [p.site + ': ' + p.failed for p in paths if p.failed]
decisions = {{}}
for p in paths:
    decisions[p.decision] = decisions.get(p.decision, 0) + 1
ids = [r.id for p in paths for r in (p.check, p.site_prior, p.encoder) if r is not None]
print(json.dumps({{"wall_s": wall, "ray_startup_s": startup, "driver_rss_before_mib": rss_before,
                  "driver_peak_rss_mib": runtime.peak_rss_mib(), "failed": failed, "decisions": decisions,
                  "records": ids}}))
"""


def fleet_rows() -> dict[tuple[str, str], np.ndarray]:
    """Each (turbine, variant)'s pool of rows (float64, the feature columns) to resample sites from."""
    table = pq.read_table(lhb.PARQUET, columns=[*lhb.FEATURES, "site", "year", "fault"],
                          filters=[("fault", "=", False)]).to_pandas().dropna()
    pools = {}
    for turbine in TURBINES:
        rows = table[table.site == turbine]
        x15 = rows[rows.year == 2015][list(lhb.FEATURES)]
        pools[turbine, "as-is"] = x15.to_numpy(np.float64)
        pools[turbine, "windy"] = x15[x15.wind_speed > x15.wind_speed.quantile(0.75)].to_numpy(np.float64)
        pools[turbine, "moved"] = (x15 + 1.5 * x15.std()).to_numpy(np.float64)
        pools[turbine, "far"] = (x15 + 8 * x15.std()).to_numpy(np.float64)
    return pools


def make_fleet(folder: Path, n: int, pools: dict, rows: int = ROWS, prefix: str = "") -> list[str]:
    """``n`` site specs (and their Parquet files) under ``folder``; site i: turbine (i // 4) % 4, variant i % 4,
    named ``<prefix><turbine>-<variant>-<i>``."""
    import pyarrow as pa

    base = {t: yaml.safe_load((Path(__file__).resolve().parents[1] / "sites" / f"{t}.yaml").read_text())
            for t in TURBINES}
    rng = np.random.default_rng(n)
    specs = []
    for i in range(n):
        turbine, variant = TURBINES[(i // 4) % 4], VARIANTS[i % 4]
        site = f"{prefix}{turbine}-{variant}-{i:04d}"
        pool = pools[turbine, variant]
        x = pool[rng.integers(0, len(pool), rows)]  # (rows, 10)
        data = folder / f"{site}.parquet"
        pq.write_table(pa.table({name: x[:, j] for j, name in enumerate(lhb.FEATURES)}), data)
        spec = {**base[turbine], **SMALL, "site": site, "target": {"uri": str(data)},
                "observations": {"uri": str(data)}}
        path = folder / f"{site}.yaml"
        path.write_text(yaml.safe_dump(spec))
        specs.append(str(path))
    return specs


def requests(store_uri: str, spec_path: str) -> dict:
    """One site's three steps in this process through a counting store: requests per step, fresh and rerun."""
    from pipeline.sites import load_site_spec
    from tests.support.counting import CountingStore, requests_per_step

    store, spec = CountingStore(Store.open(store_uri)), load_site_spec(spec_path)
    counted = {}
    for run in ("fresh", "rerun"):
        counted.update({f"{step}_{run}": sum(n.values()) for step, n in requests_per_step(store, spec).items()})
    return counted


def drive(store_uri: str, specs: list[str], cores: int, lookup: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", DRIVER.format(cores=cores), store_uri,
                             "lookup" if lookup else "no-lookup", *specs],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def overhead(run: dict, n: int, registry: Registry, cores: int) -> tuple[float, float]:
    """A fresh run of ``n`` sites: its steps' own work (their records' ``step_seconds``), its overhead per site."""
    training = sum(registry.get(i).metrics.get("step_seconds") or 0.0 for i in run.pop("records"))
    return training, run["wall_s"] * cores / n - training / n


def measure(store_uri: str, sizes: list[int], others: int, cores: int, compare_lookup: bool) -> dict:
    from tests.support.fleet import other_sites
    from tests.support.sites import publish_core

    store = Store.open(store_uri)
    core = publish_core(store_uri, steps=150)
    started = time.perf_counter()
    other_sites(store, core.id, 0, -(-others // 3), threads=16)  # a record of each site kind per site
    print(f"  {others} records of other sites in {time.perf_counter() - started:.0f} s", flush=True)
    pools = fleet_rows()
    results: dict = {"others": others}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "probe").mkdir()
        probe = make_fleet(Path(tmp) / "probe", 1, pools)
        results["requests_per_step"] = requests(store_uri, probe[0])
        for n in sizes:
            folder = Path(tmp) / f"fleet-{n}"
            folder.mkdir()
            specs = make_fleet(folder, n, pools)
            first = drive(store_uri, specs, cores)
            registry = Registry(store)
            training, per_site = overhead(first, n, registry, cores)
            rerun = drive(store_uri, specs, cores)
            rerun.pop("records")
            row = {"sites": n, **first, "training_s": training, "training_per_site_s": training / n,
                   "overhead_per_site_s": per_site,
                   "rerun_wall_s": rerun["wall_s"], "rerun_per_site_s": rerun["wall_s"] / n,
                   "rerun_driver_peak_rss_mib": rerun["driver_peak_rss_mib"], "rerun_failed": rerun["failed"]}
            if compare_lookup:  # the same fleet under other names, right after, without the driver's look-up
                (folder / "b").mkdir()
                without = drive(store_uri, make_fleet(folder / "b", n, pools, prefix="b"), cores, lookup=False)
                without_training, without_per_site = overhead(without, n, registry, cores)
                row["no_lookup"] = {"wall_s": without["wall_s"], "training_s": without_training,
                                    "overhead_per_site_s": without_per_site}
                print(f"  {n:4d} sites without the driver's look-up: wall {without['wall_s']:6.1f} s, overhead/site "
                      f"{without_per_site:.3f} s (with it: {per_site:.3f} s)", flush=True)
            results[str(n)] = row
            print(f"  {n:4d} sites: wall {row['wall_s']:6.1f} s, training {training:6.1f} s, overhead/site "
                  f"{row['overhead_per_site_s']:.3f} s, rerun/site {row['rerun_per_site_s']:.3f} s, driver peak "
                  f"{row['driver_peak_rss_mib']:.0f} MiB, decisions {row['decisions']}, failed {len(row['failed'])}",
                  flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--backends", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    parser.add_argument("--others", type=int, default=10_000, help="records of other sites already in the store")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs the embedded Ray gets")
    parser.add_argument("--compare-lookup", action="store_true",
                        help="also run each fresh fleet (under other site names) without the driver's look-up of "
                             "finished sites, side by side")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "fleet_scale.json"))
    args = parser.parse_args()

    def run(uri: str) -> dict:
        return measure(uri, args.sites, args.others, args.cores, args.compare_lookup)

    results = on_local_and_s3(run, args.backends)
    print(f"\n{'backend':8} {'sites':>5} {'wall s':>7} {'train s':>8} {'overhead/site s':>16} {'rerun/site s':>13} "
          f"{'driver MiB':>11}")
    for backend, by_size in results.items():
        for n in args.sites:
            r = by_size[str(n)]
            print(f"{backend:8} {n:5d} {r['wall_s']:7.1f} {r['training_s']:8.1f} {r['overhead_per_site_s']:16.3f} "
                  f"{r['rerun_per_site_s']:13.3f} {r['driver_peak_rss_mib']:11.0f}")
        first, last = by_size[str(args.sites[0])], by_size[str(args.sites[-1])]
        print(f"{backend:8} overhead per site, {args.sites[-1]} / {args.sites[0]} sites: "
              f"{last['overhead_per_site_s'] / first['overhead_per_site_s']:.2f}x; store requests per step: "
              f"{by_size['requests_per_step']}")
    results["machine"] = machine()
    results["settings"] = {"rows_per_site": ROWS, **SMALL, "cores": args.cores}
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
