"""``flowprior site run``: each site's whole path as a chain of Ray tasks, through the real command line on a
real local Ray: every decision taken where the check says so, one line per site, each step's log in the
store, a failing site that stops nobody else, and a rerun that trains nothing."""

import json
import re

import pytest

from pipeline.datasets import la_haute_borne as lhb
from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.sites import flowprior, publish_core, small_spec

DECIDE = {  # thresholds that make a site's check decide each way
    "R80711": ("reuse", {"finetune_gain": 0.99, "refit_fm": 1e9}),
    "R80721": ("finetune", {"finetune_gain": 0.0, "refit_fm": 1e9}),
    "R80736": ("refit", {"finetune_gain": 0.0, "refit_fm": 1.5}),  # on its readings moved by 3 sd: see `moved`
}
BROKEN = "R80790"  # its spec swaps two feature columns: its check fails, the others go on
STEP_LINE = re.compile(r"\d+/\d+ steps")  # a step's progress line (its log's, never the command's by default)


def moved(folder, site: str) -> str:
    """The site's healthy 2015 readings with every feature moved by 3 of its standard deviations: a site the
    core prior no longer explains."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(lhb.PARQUET, filters=[("site", "=", site), ("year", "=", 2015), ("fault", "=", False)])
    for name in lhb.FEATURES:
        column = pc.cast(table[name], "float64")
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.add(column, 3 * (pc.stddev(column).as_py() or 1.0)))
    path = folder / "moved.parquet"
    pq.write_table(table, path)
    return str(path)


@pytest.mark.slow
def test_site_run_takes_every_site_down_its_own_path_and_a_rerun_trains_nothing(local_ray, tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    core = publish_core(store_uri, steps=60)
    registry = Registry(Store.open(store_uri))
    specs = []
    for site, (decision, thresholds) in DECIDE.items():
        (tmp_path / site).mkdir()
        data = {"target": {"uri": moved(tmp_path / site, site), "drop_nonfinite": True}} if decision == "refit" else {}
        specs.append(str(small_spec(tmp_path / site, site=site, thresholds=thresholds, **data,
                                    finetune={"steps": 30, "refit_steps": 30, "probe_steps": 20, "log_every": 10})))
    (tmp_path / BROKEN).mkdir()
    specs.append(str(small_spec(tmp_path / BROKEN, site=BROKEN, columns=["power", "pitch", *lhb.FEATURES[2:]])))

    code, out, err = flowprior(capsys, "site", "run", *specs, "--store", store_uri)
    assert code == 1 and f"1 of 4 site(s) failed: {BROKEN}" in err, (out, err)
    assert not STEP_LINE.search(out), out  # no step's own lines by default
    assert "[site R80736] warning: column " in out  # a step's warnings are shown (its moved readings)
    finished = [line for line in out.splitlines() if line.startswith("[site ") and "warning:" not in line
                and not line.startswith("[site run]")]
    assert sorted(line.split("]")[0] for line in finished) == [f"[site {s}" for s in sorted([*DECIDE, BROKEN])]
    assert re.search(r"^\[site run\] 4/4 sites, 1 failed, 0 in flight", out, re.M), out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-4:]}  # the closing table
    assert rows[BROKEN][1:3] == ["-", "-"] and "failed at check: DataError" in " ".join(rows[BROKEN]), out
    assert "feature column 1 of 10 is 'power'" in out  # the failed site's line says why

    for site, (decision, _) in DECIDE.items():
        check = registry.get(registry.alias(f"site-check.{site}"))
        encoder = registry.get(registry.alias(f"encoder.{site}"))
        assert check.config["decision"] == decision and check.parents == [core.id], site
        assert rows[site][1:] == [decision, encoder.aligned_to, encoder.id, "ok"], out
        if decision == "reuse":
            assert encoder.aligned_to == core.id and registry.alias(f"site-prior.{site}") is None
        else:
            site_prior = registry.get(encoder.aligned_to)
            assert site_prior.config["mode"] == decision and site_prior.parents == [core.id]
            assert STEP_LINE.search(registry.store.read(site_prior.config["log"]).decode())  # its log, in the store
        log = registry.store.read(encoder.config["log"]).decode()
        assert f"[site {site} align] registered {encoder.id}" in log
    assert registry.records(site=BROKEN) == []
    records = registry.records()
    assert sorted(r.kind for r in records) == ["encoder"] * 3 + ["prior"] + ["site-check"] * 3 + ["site-prior"] * 2

    # the rerun: every step of the good sites already ran, found by the driver: no step runs (none writes its
    # log); --verbose prints which record each step found
    logged = set(registry.store.list_tree("ray-runs"))
    code, out, _ = flowprior(capsys, "site", "run", *specs[:3], "--store", store_uri, "--verbose", "--json")
    assert code == 0 and registry.records() == records  # nothing trained, nothing registered
    assert set(registry.store.list_tree("ray-runs")) == logged
    paths = {p["site"]: p for p in json.loads(out[out.index("[\n"):])}
    assert {s: p["decision"] for s, p in paths.items()} == {s: d for s, (d, _) in DECIDE.items()}
    assert all(p["encoder"] == registry.alias(f"encoder.{s}") and p["failed"] is None for s, p in paths.items())

    code, out, _ = flowprior(capsys, "site", "run", *specs[:3], "--store", store_uri, "--verbose", "--until", "check")
    assert code == 0 and len(re.findall(r"\.check\.[0-9a-f]+ already ran", out)) == 3, out
    rows = [line.split() for line in out.splitlines()[-3:]]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [(s, d, "-", "ok") for s, (d, _) in DECIDE.items()], out
