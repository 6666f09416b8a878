"""The documented `ray job submit` commands (README, docs/operations.md, docs/sites.md) against a real
local head node of a *stock* Ray cluster: the node's Python holds Ray and torch only (not flowprior,
not its other requirements), and every job brings flowprior with `flowprior runtime-env` (the package
as a py_module, the rest through pip from a wheelhouse, since nodes here have no package index; see
``tests/support/stock_venv.py``)."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.datasets import la_haute_borne as lhb
from pipeline.jobs.runtime_env import requirements
from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.processes import poll
from tests.support.ray_head import RayHead, submit
from tests.support.stock_venv import make_stock_venv, make_wheelhouse

RAY = str(Path(sys.executable).parent / "ray")  # the submitting laptop's Ray CLI
ENTRYPOINT = ["--entrypoint-num-cpus", "1", "--entrypoint-memory", str(2 << 30)]  # the driver's own slot


@pytest.fixture(scope="module")
def stock_head(tmp_path_factory):
    """``(head, runtime_env.yaml)``: a head node from the stock environment (3 CPUs), and the runtime_env
    file `flowprior runtime-env` writes for it."""
    root = tmp_path_factory.mktemp("stock")
    bin_dir = make_stock_venv(root / "venv")
    for module in ("pipeline", "s3fs", "safetensors", "torchdiffeq", "scipy"):
        probe = subprocess.run([str(bin_dir / "python"), "-c", f"import {module}"], cwd=root, capture_output=True)
        assert probe.returncode != 0, f"the stock node must not have {module}"
    assert subprocess.run([str(bin_dir / "python"), "-c", "import ray, torch"], cwd=root).returncode == 0
    wheels = make_wheelhouse(requirements(), root / "wheelhouse")
    assert "s3fs" in wheels and "safetensors" in wheels
    env_file = root / "runtime_env.yaml"
    made = subprocess.run([sys.executable, "-m", "pipeline", "runtime-env", "--no-index", "--find-links",
                           str(root / "wheelhouse"), "--out", str(env_file)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ray_dir = tempfile.mkdtemp(prefix="fp-ray-")  # short: Ray's socket paths must fit in 107 bytes
    head = RayHead(Path(ray_dir), bin_dir=bin_dir, cwd=root).start()
    yield head, env_file
    head.stop()
    assert poll(head.session_pids, lambda left: left == [], timeout=30) == []  # exactly the cluster we started is gone
    shutil.rmtree(ray_dir, ignore_errors=True)


def _submit(head: RayHead, env_file: Path, args: list[str], working_dir: Path | None = None,
            timeout: float = 420) -> subprocess.CompletedProcess:
    """The documented command: ``ray job submit --runtime-env ... [--working-dir ...] --entrypoint-num-cpus 1
    --entrypoint-memory ... -- python -m pipeline ARGS``."""
    command = [RAY, "job", "submit", "--address", head.address, "--runtime-env", str(env_file),
               *(["--working-dir", str(working_dir)] if working_dir else []), *ENTRYPOINT,
               "--", "python", "-m", "pipeline", *args]
    result = submit(command, head.env, timeout=timeout)
    assert result.returncode == 0, " ".join(args) + result.stdout[-3000:] + result.stderr[-3000:]
    assert "Job 'raysubmit_" in result.stdout and "succeeded" in result.stdout
    return result


@pytest.mark.slow
def test_a_stock_cluster_fits_a_prior_and_aligns_a_site_with_the_documented_commands(stock_head, tmp_path):
    """The platform team fits the core prior on the wind farm; a site lead checks, fine-tunes and aligns
    their turbine from a folder that holds only their spec; each step is a `ray job submit`."""
    from tests.support.sites import SITE, small_spec

    head, env_file = stock_head
    specs = tmp_path / "my-site"
    specs.mkdir()
    spec = small_spec(specs)
    store = str(tmp_path / "store")
    fit = _submit(head, env_file, [
        "prior", "fit", "--features", str(lhb.PARQUET), "--columns", ",".join(lhb.FEATURES), "--filter", "year=2014",
        "--filter", "fault=false", "--drop-nonfinite", "--latent-dim", "7", "--projection", "pca", "--normaliser",
        "per-dim", "--width", "32", "--depth", "2", "--steps", "100", "--report-every", "50", "--name", "stock",
        "--store", store])
    assert "[prior fit] registered prior-" in fit.stdout
    for step in (["site", "check", spec.name], ["site", "finetune", spec.name, "--mode", "finetune"],
                 ["site", "align", spec.name]):
        _submit(head, env_file, [*step, "--store", store], working_dir=specs, timeout=300)

    registry = Registry(Store.open(store))
    (core,) = registry.records(kind="prior")
    (site_prior,) = registry.records(kind="site-prior", site=SITE)
    (encoder,) = registry.records(kind="encoder", site=SITE)
    assert core.name == "stock" and core.metrics["step"] == 100
    assert core.metrics["train_rows"] + core.metrics["heldout_rows"] == 209_684  # complete healthy 2014 rows
    assert (Path(store) / "ray-runs" / "stock").is_dir()
    assert site_prior.parents == [core.id] and encoder.aligned_to == site_prior.id
    assert registry.aligned(SITE).id == site_prior.id
