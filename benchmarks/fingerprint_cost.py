"""The data fingerprint's cost on local disk: the sampled scheme (version 2) vs every byte (version 3).

    python benchmarks/fingerprint_cost.py [--folder-gb 1] [--edits 30] [--json out.json]

Two datasets, in one run:

* the bundled wind-farm file (``pipeline/datasets/la_haute_borne.parquet``, 15 MB);
* a folder of ``--folder-gb`` GB of Parquet files (32 MiB each: random float64 columns, so snappy
  barely shrinks them) written into a temporary folder and deleted after.

For each, the seconds to compute every file's identity: version 2's sampled SHA-256 (16 slices of
64 KiB and the size, rebuilt here as it was); version 3's SHA-256 of every byte (``source_files``,
the code ``scan_features`` runs) with 1 thread and with ``WORKERS``; and, for the read size, one thread
reading a fresh 8 MiB ``bytes`` at a time (this change's first draft). Each from the page cache
("warm", best of 3) and after ``posix_fadvise(DONTNEED)`` dropped the files from it ("cold": the
guest's cache only; a VM's host may still cache them). For scale: ``scan_features`` end to end, and
reading every row once with pyarrow, as a prior fit's validating pass does anyway. On the wind-farm
file and on one of the folder's files, also how many of ``--edits`` single-value edits (+1.0 on a
float, spread over the rows and float columns; the file rewritten with pyarrow's default
compression, snappy, and uncompressed) each scheme noticed.

It prints the table with the v3 / v2 ratios and the machine, and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.fingerprint import WORKERS, content_sha256, source_files  # noqa: E402
from pipeline.data.scan import scan_features  # noqa: E402

from machine import machine  # benchmarks/machine.py, beside this script  # noqa: E402

WIND = ROOT / "pipeline" / "datasets" / "la_haute_borne.parquet"
FILE_MB = 32
COMPRESSIONS = ("snappy", "none")  # pyarrow's default, and none
FS = fsspec.filesystem("file")


def sampled_sha256(path: str, size: int, slice_bytes: int = 64 << 10, slices: int = 16) -> str:
    """Version 2's identity of a local file: its size and up to 16 evenly spaced 64 KiB slices."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= slices * slice_bytes:
            h.update(f.read())
        else:
            for i in range(slices):
                f.seek((size - slice_bytes) * i // (slices - 1))
                h.update(f.read(slice_bytes))
    return h.hexdigest()


def read_sha256(path: str, chunk: int) -> str:
    """SHA-256 of every byte, each ``chunk`` a fresh ``bytes`` (``content_sha256`` reuses one buffer instead)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def drop_cache(paths: list[str]) -> None:
    """Evict ``paths`` from this machine's page cache (written and synced before)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(run: Callable[[], object], paths: list[str], cold: bool, repeats: int = 3) -> float:
    """Best seconds of ``repeats`` runs of ``run``, each after dropping ``paths`` from the cache if ``cold``."""
    run()  # warm the code paths (and, when warm, the cache)
    best = float("inf")
    for _ in range(repeats):
        if cold:
            drop_cache(paths)
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(paths: list[str], root: str) -> dict:
    infos = [FS.info(p) for p in paths]
    schemes: dict[str, Callable[[], object]] = {
        "v2_sampled": lambda: [sampled_sha256(i["name"], i["size"]) for i in infos],
        "v3_full_1_thread": lambda: source_files(infos, root, True, FS, workers=1),
        "v3_full_1_thread_8mib_bytes": lambda: [read_sha256(i["name"], 8 << 20) for i in infos],
        f"v3_full_{WORKERS}_threads": lambda: source_files(infos, root, True, FS),
    }
    out: dict[str, object] = {"files": len(paths), "bytes": sum(i["size"] for i in infos)}
    for cache in ("warm", "cold"):
        for name, run in schemes.items():
            out[f"{name}_{cache}_s"] = timed(run, paths, cache == "cold")
            print(f"  {name:32} {cache}: {out[f'{name}_{cache}_s']:.3f} s", flush=True)
    out["scan_features_warm_s"] = timed(lambda: scan_features(root), paths, False)
    def read_rows() -> int:
        return sum(batch.num_rows for p in paths for batch in pq.ParquetFile(p).iter_batches())

    out["read_every_row_warm_s"] = timed(read_rows, paths, False, repeats=1)
    return out


def edited(table: pa.Table, column: str, row: int) -> pa.Table:
    values = table.column(column).to_numpy().copy()
    values[row] += 1.0
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def edits_noticed(table: pa.Table, tmp: Path, edits: int, compression: str) -> dict:
    """How many of ``edits`` single-value edits of ``table``, written with ``compression``, each scheme's
    identity noticed."""
    table = table.combine_chunks()  # as the edited tables are: Parquet's pages follow the chunks
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    path = str(tmp / "wind.parquet")
    pq.write_table(table, path, compression=compression)
    size = os.path.getsize(path)
    before = sampled_sha256(path, size), content_sha256(FS, path)
    noticed, same_size = [0, 0], 0
    for i, row in enumerate(np.linspace(0, table.num_rows - 1, edits).astype(int)):
        pq.write_table(edited(table, floats[i % len(floats)], int(row)), path, compression=compression)
        size_now = os.path.getsize(path)
        same_size += size_now == size
        after = sampled_sha256(path, size_now), content_sha256(FS, path)
        noticed = [n + (a != b) for n, a, b in zip(noticed, after, before, strict=True)]  # v2 hashed the size too
    return {"edits": edits, "bytes": size, "same_size": same_size, "v2_noticed": noticed[0], "v3_noticed": noticed[1]}


def write_folder(folder: Path, gb: float) -> list[str]:
    rng, paths = np.random.default_rng(0), []
    rows = (FILE_MB << 20) // 32  # 4 float64 columns
    for k in range(max(1, round(gb * 1e9 / (FILE_MB << 20)))):
        path = folder / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({f"f{j}": rng.normal(size=rows) for j in range(4)}), path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder-gb", type=float, default=1.0)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "fingerprint_cost.json"))
    args = parser.parse_args()

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fingerprint-cost-") as tmp:
        wind = Path(tmp) / "wind"
        wind.mkdir()
        shutil.copy(WIND, wind / WIND.name)
        with open(wind / WIND.name, "rb+") as f:
            os.fsync(f.fileno())
        print(f"wind-farm file ({WIND.stat().st_size / 1e6:.1f} MB) ...", flush=True)
        results["wind_farm_file"] = measure([str(wind / WIND.name)], str(wind))
        wind_table = pq.read_table(WIND)
        results["wind_farm_edits"] = {c: edits_noticed(wind_table, Path(tmp), args.edits, c) for c in COMPRESSIONS}
        folder = Path(tmp) / "folder"
        folder.mkdir()
        print(f"writing {args.folder_gb} GB of Parquet ...", flush=True)
        paths = write_folder(folder, args.folder_gb)
        print(f"folder ({len(paths)} files, {sum(os.path.getsize(p) for p in paths) / 1e9:.2f} GB) ...", flush=True)
        results["folder"] = measure(paths, str(folder))
        first = pq.read_table(paths[0])
        results["folder_file_edits"] = {c: edits_noticed(first, Path(tmp), args.edits, c) for c in COMPRESSIONS}

    rows = [("v3, 1 thread", "v3_full_1_thread"), ("v3, 1 thread, 8 MiB bytes per read", "v3_full_1_thread_8mib_bytes"),
            (f"v3, {WORKERS} threads (scan_features)", f"v3_full_{WORKERS}_threads")]
    print(f"\n{'seconds':52} {'':>6} {'v2 sampled':>11} {'v3 full':>9} {'v3/v2':>8} {'GB/s':>6}")
    for dataset in ("wind_farm_file", "folder"):
        r = results[dataset]
        for cache in ("warm", "cold"):
            old = r[f"v2_sampled_{cache}_s"]
            for label, key in rows:
                new = r[f"{key}_{cache}_s"]
                print(f"{dataset + ': ' + label:52} {cache:>6} {old:11.4f} {new:9.4f} {new / old:8.1f} "
                      f"{r['bytes'] / new / 1e9:6.2f}")
        print(f"{dataset + ': scan_features, end to end':52} {'warm':>6} {'':11} {r['scan_features_warm_s']:9.4f}")
        print(f"{dataset + ': pyarrow reads every row':52} {'warm':>6} {'':11} {r['read_every_row_warm_s']:9.4f}")
    print()
    for dataset in ("wind_farm", "folder_file"):
        for compression, e in results[f"{dataset}_edits"].items():
            print(f"{dataset}, compression={compression} ({e['bytes'] / 1e6:.1f} MB): {e['edits']} single-value +1.0 "
                  f"edits, {e['same_size']} kept the file's size; v2 noticed {e['v2_noticed']}, v3 {e['v3_noticed']}")
    results["machine"] = {k: v for k, v in machine().items() if k != "s3_server"}  # no S3 server here
    results["settings"] = {"folder_gb": args.folder_gb, "file_mib": FILE_MB, "edits": args.edits, "workers": WORKERS}
    print(f"\nmachine: {results['machine']}")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
