"""MLflow tracking (``pipeline.tracking``) against a real MLflow server on 127.0.0.1."""

import logging
import math
import os
import socket
import sys

import pytest

from pipeline.cli import main
from pipeline.errors import TrackingError
from pipeline.storage import Store
from pipeline.tracking import Tracking, params, scalars, tracked_registry


def dead_uri() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def quick_failures(monkeypatch):
    """No retries against a dead server (the default here is 2 retries, each waiting); and the tracking URI
    restored afterwards (the CLI's --mlflow puts it into this process's environment)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", ""))


def test_metrics_are_the_finite_numbers_and_params_the_short_scalars_flattened():
    values = {"loss": 0.5, "step": 3, "ok": True, "nan": math.nan, "name": "x", "history": [1, 2],
              "fit": {"lr": 1e-3, "ema": {"decay": 0.99}}, "long": "y" * 600, "none": None}
    assert scalars(values) == {"loss": 0.5, "step": 3.0, "fit.lr": 1e-3, "fit.ema.decay": 0.99}
    assert params(values) == {"loss": "0.5", "step": "3", "ok": "True", "nan": "nan", "name": "x",
                              "fit.lr": "0.001", "fit.ema.decay": "0.99", "none": "None"}


def test_tracking_is_off_unless_the_uri_is_set_and_a_uri_with_credentials_is_refused(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert Tracking.from_env() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert Tracking.from_env() == Tracking("http://mlflow.example:5000", "flowprior")
    with pytest.raises(TrackingError, match=r"http://\*\*\*@mlflow.example:5000: URIs must not embed") as caught:
        Tracking("http://ops:hunter22@mlflow.example:5000")
    assert "hunter22" not in str(caught.value)


def test_the_cli_refuses_bad_tracking_before_doing_anything(tmp_path, capsys, monkeypatch, quick_failures):
    store = tmp_path / "store"
    features = tmp_path / "none.parquet"
    fit = ["prior", "fit", "--features", str(features), "--store", str(store)]

    assert main([*fit, "--mlflow", "http://ops:hunter22@127.0.0.1:5000"]) == 2
    err = capsys.readouterr().err
    assert "must not embed credentials" in err and "hunter22" not in err

    assert main([*fit, "--mlflow", dead_uri()]) == 1  # an unreachable server, like an unreachable store
    assert "did not answer" in capsys.readouterr().err and not store.exists()

    monkeypatch.setitem(sys.modules, "mlflow", None)  # MLflow not installed (an import of it fails)
    assert main([*fit, "--mlflow", "http://127.0.0.1:5000"]) == 2
    assert "pip install 'flowprior[mlflow]'" in capsys.readouterr().err and not store.exists()


@pytest.mark.slow
def test_a_registered_record_is_copied_with_its_links_tags_metrics_and_settings(mlflow_tracking, tmp_path):
    store = Store.open(str(tmp_path / "store"))
    registry = tracked_registry(store)
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"weights")
    prior = registry.register("prior", artifact=artifact, fingerprint="f" * 64, name="core-v1",
                              config={"width": 64, "fit": {"lr": 0.002}, "history": [{"step": 1}]},
                              metrics={"heldout_fm": 0.25, "step": 300}, tags={"team": "ops"})
    encoder = registry.register("encoder", site="plant-a", parents=[prior.id], aligned_to=prior.id,
                                metrics={"recon": 0.125, "note": "text"})

    (run,) = mlflow_tracking.runs(id=prior.id)
    tags = run.data.tags
    assert (tags["flowprior.kind"], tags["flowprior.name"], tags["flowprior.fingerprint"]) == (
        "prior", "core-v1", "f" * 64)
    assert tags["flowprior.artifact"] == store.uri_of(prior.artifact) and tags["team"] == "ops"
    assert "flowprior.site" not in tags and run.info.run_name == prior.id and run.info.status == "FINISHED"
    assert run.data.metrics == {"heldout_fm": 0.25, "step": 300.0}
    assert run.data.params == {"width": "64", "fit.lr": "0.002", "settings_digest": prior.config["settings_digest"],
                               "artifact_bytes": "7"}  # the artifact's size, kept by the registry
    (run,) = mlflow_tracking.runs(id=encoder.id)
    tags = run.data.tags
    assert tags["flowprior.kind"] == "encoder" and tags["flowprior.site"] == "plant-a"
    assert tags["flowprior.parents"] == tags["flowprior.aligned_to"] == prior.id
    assert run.data.metrics == {"recon": 0.125}
    assert len(mlflow_tracking.runs()) == 2  # nothing else went there


@pytest.mark.slow
def test_a_server_down_at_registration_only_warns_and_registry_mirror_copies_later(
        mlflow_tracking, tmp_path, monkeypatch, caplog, capsys, quick_failures):
    store_uri = str(tmp_path / "store")
    registry = tracked_registry(Store.open(store_uri))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri())
    with caplog.at_level(logging.WARNING):
        first = registry.register("prior", tags={"team": "ops"})
        second = registry.register("prior", parents=[first.id])
    assert [r.id for r in registry.records()] == [first.id, second.id]  # the registry is the source of truth
    assert f"could not copy record {first.id} to MLflow" in caplog.text and "registry mirror" in caplog.text
    assert mlflow_tracking.runs() == []

    live = mlflow_tracking.server.uri
    mirror = ["registry", "mirror", "--store", store_uri, "--mlflow", live]
    assert main([*mirror, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert first.id in out and "2 record(s) to copy" in out and mlflow_tracking.runs() == []
    assert main([*mirror, "--where", "tag.team=ops"]) == 0
    assert "1 record(s) copied" in capsys.readouterr().out
    assert [r.data.tags["flowprior.id"] for r in mlflow_tracking.runs()] == [first.id]
    assert main(mirror) == 0
    out = capsys.readouterr().out
    assert "1 record(s) copied" in out and "1 were there already" in out
    assert sorted(r.data.tags["flowprior.id"] for r in mlflow_tracking.runs()) == sorted([first.id, second.id])
    assert main(mirror) == 0 and "0 record(s) copied" in capsys.readouterr().out


@pytest.mark.slow
def test_a_training_run_continues_where_it_stopped_and_ends_with_its_outcome(mlflow_tracking):
    tracking = Tracking.from_env()
    with pytest.raises(RuntimeError, match="lost the node"):
        with tracking.training_run("fit-a", {"steps": 100, "fit": {"lr": 0.01}}, {"team": "ops"}) as run:
            run.write(10, {"loss": 2.0, "phase": "warmup"})
            raise RuntimeError("lost the node")
    (failed,) = mlflow_tracking.runs(run="fit-a")
    assert failed.info.status == "FAILED" and failed.data.params == {"steps": "100", "fit.lr": "0.01"}
    assert failed.data.tags["team"] == "ops" and failed.info.run_name == "fit-a"

    with tracking.training_run("fit-a", {"steps": 100, "fit": {"lr": 0.01}}, {}) as again:
        again.write(20, {"loss": 1.0})
        again.end_tags["flowprior.registered"] = "prior-x"
    assert again.run_id == run.run_id  # the same run, continued
    (done,) = mlflow_tracking.runs(run="fit-a")
    assert done.info.status == "FINISHED" and done.data.tags["flowprior.registered"] == "prior-x"
    assert mlflow_tracking.history(done, "loss") == {10: 2.0, 20: 1.0}
