"""A real Ray head node on 127.0.0.1 for the `ray job submit` tests, stopped without touching others.

``ray start --head --block`` runs in a session of its own; stopping sends SIGTERM to its process
group, then SIGKILL to whatever is left in that session (Ray's workers start their own process
groups but stay in the session). ``ray stop`` is never used: it would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.s3server import free_ports


class RayHead:
    """``bin_dir``: the Python environment the node runs (default: this one); ``cwd``: where it starts."""

    def __init__(self, temp_dir: Path, bin_dir: Path | None = None, cwd: Path | None = None) -> None:
        self.temp_dir, self.cwd = Path(temp_dir), cwd
        # every port the head listens on, distinct (Ray refuses two components on one port)
        self.dashboard_port, self.gcs_port, *self.other_ports = free_ports(7)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.bin_dir = Path(bin_dir or Path(sys.executable).parent)
        bin_dir = str(self.bin_dir)
        # Token auth, as local clusters use by default; the job client needs the same token.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process: subprocess.Popen | None = None

    def start(self, num_cpus: int = 3, timeout: float = 90, object_store_mib: int | None = None) -> "RayHead":
        """Start the head with ``num_cpus`` logical CPUs: by default this machine's two for training and
        one for Ray Data's read tasks (as the embedded runtime has, see ``runtime.INGEST_CPUS``)."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        client, agent, agent_grpc, runtime_env, metrics = self.other_ports
        args = [str(self.bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={client}", f"--num-cpus={num_cpus}",
                # fixed default ports (e.g. the job agent's 52365) may be held by another Ray on this
                # machine, such as a test session's in-process one: then no job agent ever comes up
                f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
                f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                *([f"--object-store-memory={object_store_mib << 20}"] if object_store_mib else [])]
        log = open(self.temp_dir / "head.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; see {self.temp_dir / 'head.log'}")
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # the dashboard answered (401 without the token)
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not answer within {timeout:.0f} s")

    def session_pids(self) -> list[int]:
        """Live (non-zombie) processes of the head's session."""
        return session_pids(self.process.pid) if self.process is not None else []

    def stop(self, grace: float = 10) -> None:
        if self.process is not None:
            stop_session(self.process, grace)


def session_pids(leader: int) -> list[int]:
    """Live (non-zombie) processes of the session led by ``leader``."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if os.getsid(int(entry)) == leader and stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def stop_session(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to ``process``'s group, then SIGKILL to whatever is left in its session."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    for pid in session_pids(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


REPO = Path(__file__).resolve().parents[2]  # the repository root: the jobs' --working-dir
NO_AGENT = "No available agent to submit job"  # the head's job agent is still starting (on a busy machine)


def submit(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit ...`, retried while the head node answers that its job agent is not up yet (its
    own advice: "please try again later"); nothing was submitted then, so a retry cannot run a job twice."""
    deadline = time.monotonic() + 30  # the agent comes up within seconds; this bounds a head that never has one
    while True:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode == 0 or NO_AGENT not in result.stdout + result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.5)  # ask again: the head said its agent is not up yet


EXCLUDES = [".git", ".venv", "flowprior-store", "flowprior-toy", "flowprior-demo", "ray_results", "**/__pycache__"]
