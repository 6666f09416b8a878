"""The core prior fit on a real local Ray: registration, resume, failures and bad input."""

import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import read_features
from pipeline.data.split import is_heldout, row_hash
from pipeline.errors import StoreError
from pipeline.jobs.prior_fit import fit_core_prior, scan
from pipeline.jobs.prior_fit_spec import PriorFitSpec
from pipeline.method.configs import FitConfig
from pipeline.registry import CORE_ALIAS, Registry
from pipeline.sites.models import load_prior
from pipeline.storage import S3Options, Store
from pipeline.storage.layout import RAY_RUNS, VALIDATED
from tests.support.processes import pids_titled, poll
from tests.support.shards import assert_disjoint_shards
from tests.support.tfevents import merged

SMALL = dict(width=32, depth=2, fit=FitConfig(steps=300, warmup=20, lr=2e-3), report_every=100)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.parquet", "no such file or directory"),
    (lambda d: _write(d, name=["x", "y", "z"]), "no numeric columns"),
    (lambda d: _garbage(d / "bad.parquet"), "not a readable Parquet file"),
])
def test_bad_paths_and_schemas_fail_before_ray_starts(tmp_path, make, message, monkeypatch):
    from pipeline.jobs import runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was reached before the bad input was refused")

    monkeypatch.setattr(runtime, "connect", no_ray)
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message):
        fit_core_prior(PriorFitSpec(features=str(path), **SMALL), Store.open(str(tmp_path / "store")),
                       say=lambda _: None)
    assert not (tmp_path / "store").exists()  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("make, message", [
    (lambda d: _write(d, a=[]), "no feature rows"),
    (lambda d: _write(d, a=[1.0, float("nan"), 2.0, 3.0]), r"bad.parquet: 1 rows have NaN/inf/null values, first in "
                                                            r"column 'a' at row 1"),
    (lambda d: _write(d, a=[1.0, 2.0, 3.0]), "too few to fit a prior"),
])
def test_bad_rows_fail_in_the_validating_pass_before_any_training(local_ray, tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message):
        fit_core_prior(PriorFitSpec(features=str(path), **SMALL), Store.open(str(tmp_path / "store")),
                       say=lambda _: None)
    # no checkpoint, no record: the statistics of files whose rows passed the checks, and the folder of the Ray
    # Train run that started beside the pass (no checkpoint in it)
    store = tmp_path / "store"
    kept = [p.relative_to(store).parts for p in store.rglob("*") if p.is_file()]
    assert {parts[0] for parts in kept} <= {VALIDATED, RAY_RUNS}
    assert not [parts for parts in kept if any(part.startswith("checkpoint") for part in parts)]
    assert ("NaN" in message) is not any(parts[0] == VALIDATED for parts in kept)  # a bad row's file: no statistics


@pytest.mark.slow
def test_ray_train_starts_while_the_validating_pass_runs(local_ray, tmp_path, monkeypatch):
    """The pass here cannot end before a Ray Train worker exists, so a fit that started Ray Train only after it
    would never train (the poll's deadline fails the test). The features are a list column of any length: the
    network's size comes from the pass too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.jobs import prior_fit

    x = np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32) * [1.0, 2.0, 0.5]
    pq.write_table(pa.table({"features": pa.array(list(x), pa.list_(pa.float32()))}), tmp_path / "v.parquet")
    assert scan(PriorFitSpec(features=str(tmp_path / "v.parquet"))).dim is None
    prepare, workers = prior_fit.prepare, []

    def prepare_once_a_train_worker_runs(*args, **kwargs):
        workers.extend(poll(lambda: pids_titled("ray::RayTrainWorker"), bool, timeout=180))
        return prepare(*args, **kwargs)

    monkeypatch.setattr(prior_fit, "prepare", prepare_once_a_train_worker_runs)
    store = Store.open(str(tmp_path / "store"))
    record = fit_core_prior(PriorFitSpec(features=str(tmp_path / "v.parquet"), **SMALL), store, say=lambda _: None)
    assert workers, "no Ray Train worker started while the validating pass ran"
    timeline = record.config["ingest"]["timeline"]
    assert timeline["validating"] < timeline["validated"] < record.config["ingest"]["seconds_to_first_step"]
    prior = load_prior(Registry(store), record.id)
    assert prior.latent_dim == 3 and record.metrics["step"] == 300
    ingest = record.config["ingest"]
    assert ingest["columns"] == ["features[0]", "features[1]", "features[2]"]
    assert ingest["train_rows"] + ingest["heldout_rows"] == 3000


def _garbage(path: Path) -> Path:
    path.write_bytes(b"PAR1 not parquet")
    return path


def _write(folder: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "bad.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.float64() if k == "a" else None) for k, v in columns.items()}), path)
    return path


def test_unreachable_store_fails_before_reading_data_or_starting_ray(two_blobs):
    store = Store.open("s3://bucket/p", S3Options(endpoint_url="http://127.0.0.1:9", retries=1, connect_timeout=1))
    start = time.monotonic()
    with pytest.raises(StoreError, match="cannot (list|read) registry/records"):
        fit_core_prior(PriorFitSpec(features=str(two_blobs), **SMALL), store, say=lambda _: None)
    assert time.monotonic() - start < 10


def test_invalid_specs_are_refused():
    for kwargs, message in [({"workers": 0}, "workers must be >= 1"), ({"name": "../x"}, "invalid run name"),
                            ({"projection": "umap"}, "unknown projection"), ({"heldout_fraction": 0.7}, "heldout"),
                            ({"workers": 3, "fit": FitConfig(batch_size=256, t_group=64)},
                             r"--t-group 64 must divide each worker's batch \(86: 256 over 3 workers\)")]:
        with pytest.raises(ValueError, match=message):
            PriorFitSpec(features="x", **kwargs)


@pytest.mark.slow
def test_more_workers_than_cpus_is_a_clear_error(local_ray, two_blobs, tmp_path):
    with pytest.raises(ValueError, match="3 workers x 1 CPU need 3 CPUs but the cluster has 2"):
        fit_core_prior(PriorFitSpec(features=str(two_blobs), workers=3, **SMALL), Store.open(str(tmp_path / "s")),
                       say=lambda _: None)


@pytest.mark.slow
def test_two_workers_fit_register_once_and_a_rerun_resumes_nothing_new(local_ray, two_blobs, store_uri,
                                                                         mlflow_tracking):
    store = Store.open(store_uri)
    lines = []
    spec = PriorFitSpec(features=str(two_blobs), workers=2, name="core-v1", **SMALL)
    record = fit_core_prior(spec, store, say=lines.append, tags={"team": "ops"})
    registry = Registry(store)
    assert [r.id for r in registry.records()] == [record.id] and registry.alias(CORE_ALIAS) == record.id
    assert record.name == "core-v1" and record.config["workers"] == 2 and record.tags == {"team": "ops"}
    # rank 0 wrote every report's metrics as TensorBoard events under the run's folder in the store
    board = "ray-runs/core-v1/tensorboard"
    events = merged({name: store.read(f"{board}/{name}") for name in store.list(board)})
    history = load_prior(registry, record.id).info["history"]
    assert sorted(events["heldout_fm"]) == [h["step"] for h in history]
    assert events["heldout_fm"][history[-1]["step"]] == pytest.approx(history[-1]["heldout_fm"], rel=1e-6)
    # and to the fit's MLflow run (tracking is on here), which ends tagged with the record it registered; the
    # record itself is copied as a run of its own
    (run,) = mlflow_tracking.runs(run="core-v1")
    assert (run.info.status, run.data.tags["flowprior.registered"], run.data.tags["team"]) == (
        "FINISHED", record.id, "ops")
    assert run.data.params["workers"] == "2" and run.data.params["fit.steps"] == "300"
    assert mlflow_tracking.history(run, "heldout_fm") == pytest.approx({h["step"]: h["heldout_fm"] for h in history})
    (copy,) = mlflow_tracking.runs(id=record.id)
    assert copy.data.tags["flowprior.artifact"] == store.uri_of(record.artifact)
    assert record.config["ray_run"]["path"].endswith("ray-runs/core-v1")
    assert record.fingerprint == scan(spec).fingerprint
    assert record.metrics["step"] == 300 and record.metrics["resumes"] == 0
    # the held-out split is the row hash's; the two workers read disjoint halves of the training rows
    x = read_features(str(two_blobs)).values
    heldout = is_heldout(row_hash(x, spec.seed), spec.heldout_fraction)
    ingest = record.config["ingest"]
    assert (ingest["train_rows"], ingest["heldout_rows"]) == ((~heldout).sum(), heldout.sum())
    assert 300 < heldout.sum() < 500  # 10% of 4,000 rows, within binomial noise
    assert_disjoint_shards(ingest, row_hash(x[~heldout], spec.seed))
    # the validating pass kept each file's statistics in the store, for a later fit of the same bytes
    assert ingest["files_validated_before"] == 0 and len(store.list(VALIDATED)) == ingest["files"]
    # the feature contract: the columns, their types and the training rows' mean and sd, in record and checkpoint
    contract = record.config["features"]
    assert contract["columns"] == ["features[0]", "features[1]"] and contract["dtypes"] == ["float", "float"]
    np.testing.assert_allclose(contract["mean"], x[~heldout].mean(0), atol=1e-4)
    np.testing.assert_allclose(contract["sd"], x[~heldout].std(0), rtol=1e-4)
    assert load_prior(registry, record.id).info["features"] == contract
    # the fit learned the two blobs: held-out FM loss well below an untrained model's, samples close to data
    from pipeline.method.configs import VelocityConfig
    from pipeline.method.metrics import heldout_metrics
    from pipeline.method.velocity import VelocityMLP

    torch.manual_seed(0)
    untrained = VelocityMLP(VelocityConfig(dim=2, width=SMALL["width"], depth=SMALL["depth"]))
    heldout = load_prior(registry, record.id).to_prior(x[heldout])
    assert record.metrics["heldout_fm"] < 0.8 * heldout_metrics(untrained, heldout, seed=0)["heldout_fm"]
    assert record.metrics["sliced_w2"] < 0.5
    samples = load_prior(registry, record.id).sample(2000)
    assert 0.3 < (samples[:, 0] > 0).float().mean() < 0.7  # both modes are populated
    # rerunning the same name registers nothing new
    again = fit_core_prior(spec, store, say=lines.append)
    assert again.id == record.id and len(registry.records()) == 1 and len(mlflow_tracking.runs()) == 2
    assert any("already registered" in line for line in lines)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint_and_registers_one_prior(local_ray, two_blobs, tmp_path):
    store = Store.open(str(tmp_path / "store"))
    runs = tmp_path / "store" / "ray-runs" / "faulty"
    spec = PriorFitSpec(features=str(two_blobs), workers=2, name="faulty",
                        **{**SMALL, "fit": FitConfig(steps=800, warmup=20), "report_every": 100})
    killed = []

    def kill_a_worker_after_the_first_checkpoint() -> None:  # (not a hook: watches the store from outside)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (runs / "checkpoint_manager_snapshot.json").exists():  # a checkpoint is committed
                pids = pids_titled("ray::RayTrainWorker")  # Ray Train's worker actors
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)  # a real process death, mid-fit
                    killed.append(pids[-1])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    record = fit_core_prior(spec, store, say=lambda _: None)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert record.metrics["step"] == 800 and record.metrics["resumes"] >= 1
    assert [r.id for r in Registry(store).records()] == [record.id]


DIES_BEFORE_THE_ALIAS_MOVE = """
import os, signal, sys
from pipeline.storage.store import Store
create = Store.create
def create_or_die(self, key, data):
    if key.startswith("registry/aliases/"):
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the driver and the Ray it started, at once
    create(self, key, data)
Store.create = create_or_die
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_cli_starts_a_local_ray_and_a_driver_killed_before_the_alias_move_is_completed_by_the_rerun(
        two_blobs, tmp_path):
    """The crash window between a prior's record and the ``core`` move: the rerun with the same name trains
    nothing and moves the alias, once; the same name with other settings is refused."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FLOWPRIOR_STORE")}
    fit = ["prior", "fit", "--features", str(two_blobs), "--steps", "100", "--report-every", "50", "--width", "32",
           "--depth", "2", "--name", "embedded", "--precision", "bf16", "--t-group", "8", "--tag", "team=ml"]
    died = subprocess.run([sys.executable, "-c", DIES_BEFORE_THE_ALIAS_MOVE, *fit], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    printed = died.stdout + died.stderr  # progress a person can follow: steps done of all, with an ETA
    assert re.search(r"\[prior fit\] 50/100 steps \(50%\), \d+s, ETA \d+s", printed)
    assert "100/100 steps (100%)" in printed
    registry = Registry(Store.open(str(tmp_path / "flowprior-store")))
    (record,) = registry.records()
    assert registry.alias(CORE_ALIAS) is None  # the crash window

    result = subprocess.run([sys.executable, "-m", "pipeline", *fit], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already registered" in result.stdout and "/100 steps" not in result.stdout + result.stderr
    assert registry.records() == [record] and [m.target for m in registry.alias_history(CORE_ALIAS)] == [record.id]
    assert record.name == "embedded" and f"prior {record.id}  run embedded" in result.stdout
    assert record.tags == {"team": "ml"}
    # the training settings reached the workers' loop and the record (bf16 autocast runs on a CPU too)
    assert record.config["fit"]["precision"] == "bf16" and record.config["fit"]["t_group"] == 8
    assert record.metrics["step"] == 100 and math.isfinite(record.metrics["heldout_fm"])

    other = [*fit[:fit.index("--steps") + 1], "50", *fit[fit.index("--steps") + 2:]]
    refused = subprocess.run([sys.executable, "-m", "pipeline", *other], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "already registered as" in refused.stderr and "other settings" in refused.stderr
    assert registry.records() == [record]
