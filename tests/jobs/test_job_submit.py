"""`ray job submit` of the core prior fit against a real local head node (token auth)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.ray_head import RayHead

REPO = Path(__file__).resolve().parents[2]
EXCLUDES = [".git", ".venv", "flowprior-store", "flowprior-toy", "ray_results", "**/__pycache__"]


@pytest.mark.slow
def test_ray_job_submit_fits_and_registers_a_prior_on_a_real_head_node(two_blobs, tmp_path):
    import tempfile

    ray_dir = tempfile.mkdtemp(prefix="fp-ray-")  # short: Ray's socket paths must fit in 107 bytes
    head = RayHead(Path(ray_dir)).start()
    try:
        store = tmp_path / "store"
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.address,
                  "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                  "python", "-m", "pipeline", "prior", "fit", "--features", str(two_blobs), "--store", str(store),
                  "--workers", "2", "--steps", "200", "--width", "32", "--depth", "2", "--report-every", "100",
                  "--name", "submitted"]
        result = subprocess.run(submit, capture_output=True, text=True, timeout=420, env=head.env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "[prior fit] registered prior-" in result.stdout
        (record,) = Registry(Store.open(str(store))).records()
        assert record.kind == "prior" and record.name == "submitted" and record.metrics["step"] == 200
        assert (store / "ray-runs" / "submitted").is_dir()
        assert "Job 'raysubmit_" in result.stdout and "succeeded" in result.stdout
    finally:
        head.stop()
    time.sleep(0.5)
    assert head.session_pids() == []  # exactly the cluster we started is gone
    shutil.rmtree(ray_dir, ignore_errors=True)
