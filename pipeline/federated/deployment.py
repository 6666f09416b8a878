"""The Flower processes and CLI calls behind ``flowprior federated join`` and ``flowprior federated fit``.

A site runs ``flower-supernode`` with its site spec in the node config (:func:`supernode_command`); the
platform team submits the Flower App in ``flower_app/`` to its SuperLink with ``flwr run`` and follows it
with ``flwr log`` and ``flwr list`` (:class:`Submission`). Flower's CLI needs its SuperLink's address in a
``config.toml`` under ``$FLWR_HOME``: a submission writes one in a private temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomli_w

from pipeline.errors import SetupError, SuperLinkUnreachable

APP = Path(__file__).parent / "flower_app"
FEDERATION = "flowprior"  # the name the temporary config.toml gives the SuperLink
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flower_command(name: str) -> str:
    """The path of Flower's command ``name``: beside this Python first (a virtual environment), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SetupError(f"Flower's {name} command is missing: pip install 'flowprior[federated]'")
    return found


def flower_env(**extra: str) -> dict[str, str]:
    """This environment (and ``extra``) with Flower's telemetry and update checks off and this Python's folder
    first on PATH (the SuperLink and SuperNode start ``flower-superexec`` from there)."""
    env = {**os.environ, **QUIET, **extra}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def tls_args(insecure: bool, root_certificates: str | None) -> list[str]:
    if insecure:
        return ["--insecure"]
    return ["--root-certificates", root_certificates] if root_certificates else []


def supernode_command(superlink: str, site_spec: str, port: int, threads: int, insecure: bool,
                      root_certificates: str | None = None) -> list[str]:
    """``flower-supernode`` serving ``site_spec`` (an absolute path) to ``superlink`` (host:port); ``port``: its
    local Runtime API port (127.0.0.1), one per SuperNode on a host; ``threads``: torch threads of its ClientApp."""
    node_config = f"site-spec={json.dumps(site_spec)} threads={threads}"
    return [flower_command("flower-supernode"), "--superlink", superlink, "--port", str(port),
            "--node-config", node_config, *tls_args(insecure, root_certificates)]


class Submission:
    """One run of the Flower App on a SuperLink: submit it, follow its log, read its end state."""

    def __init__(self, superlink: str, insecure: bool, root_certificates: str | None = None) -> None:
        self.address = superlink
        self.home = tempfile.TemporaryDirectory(prefix="flowprior-flwr-")
        entry: dict[str, object] = {"address": superlink, "insecure": insecure}
        if root_certificates:
            entry["root-certificates"] = str(Path(root_certificates).resolve())
        Path(self.home.name, "config.toml").write_text(tomli_w.dumps({"superlink": {FEDERATION: entry}}))
        self.env = flower_env(FLWR_HOME=self.home.name)

    def _flwr(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([flower_command("flwr"), *args], env=self.env, text=True,
                              capture_output=capture, check=False)

    def submit(self, run_config: dict[str, object]) -> int:
        """``flwr run`` the App with ``run_config``; returns the run id."""
        config = Path(self.home.name, "run.toml")
        config.write_text(tomli_w.dumps(run_config))
        done = self._flwr("run", str(APP), FEDERATION, "--run-config", str(config), "--format", "json")
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {}
        if done.returncode or not answer.get("success"):
            said = answer.get("error-message") or _last_line(done.stderr) or _last_line(done.stdout)
            error = SuperLinkUnreachable if "unavailable" in said.lower() else SetupError
            raise error(f"flwr run failed on the SuperLink at {self.address}: {said}")
        return int(answer["run-id"])

    def follow(self, run_id: int) -> None:
        """Print the run's log (the ServerApp's output) as it comes, until the run ends."""
        self._flwr("log", str(run_id), FEDERATION, "--stream", capture=False)

    def status(self, run_id: int) -> dict:
        """The run as ``flwr list`` reports it: ``status`` (e.g. ``finished:completed``), ``network-traffic``, ..."""
        done = self._flwr("list", FEDERATION, "--run-id", str(run_id), "--format", "json")
        try:
            return json.loads(done.stdout)["runs"][0]
        except (json.JSONDecodeError, KeyError, IndexError):
            raise SuperLinkUnreachable(f"flwr list failed on the SuperLink at {self.address}: "
                                       f"{_last_line(done.stderr) or _last_line(done.stdout)}") from None

    def close(self) -> None:
        self.home.cleanup()


def _last_line(text: str) -> str:
    """The last non-empty line of a Flower command's output (its error; the lines before are warnings)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
