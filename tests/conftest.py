"""Fixtures shared by the suite: the Gaussian oracle, stores on local disk and a real S3 server, MLflow."""

from __future__ import annotations

import pytest
import torch

from tests.support.oracles import GaussianFlow
from tests.support.s3server import BUCKET


@pytest.fixture
def gaussian_flow() -> GaussianFlow:
    return GaussianFlow(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), s=0.6)


# -- stores: local disk and a real S3 server (SeaweedFS on 127.0.0.1) -----------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS for the session, with the AWS variables a user would set pointing at it."""
    import os

    from tests.support.s3server import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        server.make_bucket(BUCKET)
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path) -> str:
    """A fresh, empty store URI on each backend."""
    import uuid

    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(store_uri):
    from pipeline.storage import Store

    return Store.open(store_uri)


@pytest.fixture
def s3_store(s3_server):
    """A fresh, empty store on the S3 server only."""
    import uuid

    from pipeline.storage import Store

    return Store.open(f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}")


# -- a real MLflow tracking server (mlflow server on 127.0.0.1, SQLite) ------------------------------
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from tests.support.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_tracking(mlflow_server, monkeypatch, request):
    """MLflow tracking on, as ``MLFLOW_TRACKING_URI`` turns it on for a user, into an experiment of this
    test's own (the ``Experiment`` returned)."""
    import re

    experiment = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    return mlflow_server.experiment(experiment)
