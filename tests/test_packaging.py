"""A built wheel is the whole product: installed into a fresh environment, `flowprior demo --quick` runs
from outside the repository (the demo's site specs and data ship inside the package)."""

import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

from pipeline.demo import SITES
from pipeline.sites import load_site_spec
from tests.support.stock_venv import make_linked_venv

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_demo_specs_are_the_repositorys_site_specs():
    shipped = sorted(SITES.glob("*.yaml"))
    assert [p.name for p in shipped] == sorted(p.name for p in (ROOT / "sites").glob("*.yaml")) and shipped
    for path in shipped:
        mine, theirs = load_site_spec(path), load_site_spec(ROOT / "sites" / path.name)
        assert mine.to_dict() | {"path": None} == theirs.to_dict() | {"path": None}


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_environment_runs_the_quick_demo_outside_the_repository(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("flowprior-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert {"pipeline/demo/sites/R80711.yaml", "pipeline/datasets/la_haute_borne.parquet"} <= shipped
    # the fresh environment: flowprior's dependencies (linked from this one's, nothing downloaded), not flowprior
    requirements = [r for r in distribution("flowprior").requires if "extra ==" not in r]
    bin_dir = make_linked_venv(tmp_path / "venv", requirements)
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    where = subprocess.run([bin_dir / "python", "-c", "import pipeline; print(pipeline.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in where and str(ROOT) not in where  # the installed copy, not this checkout
    run = subprocess.run([bin_dir / "flowprior", "demo", "--quick", "--out", "demo"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert sorted(summary["sites"]) == ["R80711", "R80721", "R80736", "R80790"], summary.keys()
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000
