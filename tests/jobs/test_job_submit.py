"""`ray job submit` of the core prior fit against a real local head node (token auth)."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from pipeline.datasets import la_haute_borne as lhb
from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.ray_head import EXCLUDES, REPO, RayHead, submit

@pytest.mark.slow
def test_ray_job_submit_fits_and_registers_a_prior_on_a_real_head_node(two_blobs, tmp_path):
    import tempfile

    ray_dir = tempfile.mkdtemp(prefix="fp-ray-")  # short: Ray's socket paths must fit in 107 bytes
    head = RayHead(Path(ray_dir)).start()
    try:
        store = tmp_path / "store"
        command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.address,
                  "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                  "python", "-m", "pipeline", "prior", "fit", "--features", str(two_blobs), "--store", str(store),
                  "--workers", "2", "--steps", "200", "--width", "32", "--depth", "2", "--report-every", "100",
                  "--name", "submitted"]
        result = submit(command, head.env, timeout=420)
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


@pytest.mark.slow
def test_a_site_lead_submits_the_site_steps_as_ray_jobs(tmp_path):
    """The README's commands: the platform team fits the core prior on the wind farm, a site lead
    checks, fine-tunes and aligns their turbine, each as a `ray job submit`."""
    import tempfile

    from tests.jobs.test_sites import SITE, small_spec

    spec = small_spec(tmp_path)
    ray_dir = tempfile.mkdtemp(prefix="fp-ray-")
    head = RayHead(Path(ray_dir)).start()
    store = tmp_path / "store"
    flowprior = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.address,
                 "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                 "python", "-m", "pipeline"]
    try:
        for step in (["prior", "fit", "--features", "pipeline/datasets/la_haute_borne.parquet", "--columns",
                      ",".join(lhb.FEATURES), "--filter", "year=2014", "--filter", "fault=false", "--drop-nonfinite",
                      "--latent-dim", "7", "--projection", "pca", "--normaliser", "per-dim", "--width", "32",
                      "--depth", "2", "--steps", "100", "--report-every", "50"],
                     ["site", "check", str(spec)],
                     ["site", "finetune", str(spec), "--mode", "finetune"],
                     ["site", "align", str(spec)]):
            result = submit([*flowprior, *step, "--store", str(store)], head.env, timeout=300)
            assert result.returncode == 0, " ".join(step) + result.stdout[-3000:] + result.stderr[-3000:]
            assert "succeeded" in result.stdout
        registry = Registry(Store.open(str(store)))
        (core,) = registry.records(kind="prior")
        (site_prior,) = registry.records(kind="site-prior", site=SITE)
        (encoder,) = registry.records(kind="encoder", site=SITE)
        assert core.metrics["train_rows"] + core.metrics["heldout_rows"] == 209_684  # complete healthy 2014 rows
        assert site_prior.parents == [core.id] and encoder.aligned_to == site_prior.id
        assert registry.aligned(SITE).id == site_prior.id
    finally:
        head.stop()
    time.sleep(0.5)
    assert head.session_pids() == []  # exactly the cluster we started is gone
    shutil.rmtree(ray_dir, ignore_errors=True)
