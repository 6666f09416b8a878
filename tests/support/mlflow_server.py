"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1 with a SQLite backend.

MLflow comes with the test extra. Only the process started here is ever stopped; its database and
artifacts live in the folder it is given.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        binary = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
        if not binary:
            raise RuntimeError("the 'mlflow' command is missing: pip install -e '.[test]'")
        args = [binary, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1"]
        log = open(self.folder / "mlflow.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see "
                                   f"{self.folder / 'mlflow.log'}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; see {self.folder / 'mlflow.log'}")

    def stop(self) -> None:
        stop_group(self.process)

    def experiment(self, name: str) -> "Experiment":
        return Experiment(self, name)


@dataclass(frozen=True)
class Experiment:
    """One experiment on the server, read back with MLflow's own client."""

    server: MlflowServer
    name: str

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.server.uri)

    def runs(self, **tags: str) -> list:
        """Every run of the experiment whose ``flowprior.<key>`` tags have these values."""
        found = self.client.get_experiment_by_name(self.name)
        where = " and ".join(f"tags.`flowprior.{key}` = '{value}'" for key, value in tags.items())
        return [] if found is None else self.client.search_runs([found.experiment_id], where, max_results=1000)

    def history(self, run, key: str) -> dict[int, float]:
        """``{step: value}`` of metric ``key`` of ``run`` (the last value logged at each step)."""
        return {m.step: m.value for m in sorted(self.client.get_metric_history(run.info.run_id, key),
                                                 key=lambda m: m.timestamp)}
