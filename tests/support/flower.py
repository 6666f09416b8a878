"""A Flower deployment on 127.0.0.1 for tests: one SuperLink and SuperNodes as separate processes, each in
its own session (so the test can kill one with everything it started), each with its own environment
(``FLWR_HOME``, credentials). Only processes started here are ever stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.federated.deployment import flower_command, flower_env
from tests.support.processes import stop_group
from tests.support.s3server import free_ports

AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
       "AWS_PROFILE")


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in AWS}


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class FlowerBench:
    """A SuperLink at ``self.address`` and SuperNodes started by ``flowprior federated join``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port, self.health = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}

    def _home(self, name: str) -> Path:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def start_superlink(self, env: dict[str, str], timeout: float = 120) -> None:
        """The SuperLink (and the ServerApps it runs) with ``env`` (no site's credentials)."""
        home = self._home("superlink")
        args = [flower_command("flower-superlink"), "--insecure", "--database", str(home / "state.db"),
                "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        self.superlink = subprocess.Popen(args, cwd=home, env={**flower_env(**env), "FLWR_HOME": str(home)},
                                          stdout=open(home / "superlink.log", "ab"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.superlink.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not listen on {self.port}: {self.log('superlink')[-2000:]}")
            time.sleep(0.2)

    def start_supernode(self, site: str, site_spec: Path, env: dict[str, str]) -> subprocess.Popen:
        """``flowprior federated join`` for ``site`` with ``env`` (its own credentials)."""
        home = self._home(site)
        port, = free_ports(1)
        args = [sys.executable, "-m", "pipeline", "federated", "join", "--site-spec", str(site_spec),
                "--superlink", self.address, "--insecure", "--port", str(port)]
        process = subprocess.Popen(args, cwd=home, env={**flower_env(**env), "FLWR_HOME": str(home)},
                                   stdout=open(home / f"{site}.log", "ab"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.supernodes[site] = process
        return process

    def log(self, name: str) -> str:
        path = self.root / name / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.supernodes.values():
            stop_group(process)
        stop_group(self.superlink)


def base_env() -> dict[str, str]:
    """This environment without any AWS credentials (each process adds its own)."""
    return without_credentials(dict(os.environ))
