"""Processes the tests start or kill: find Ray's workers by the title Ray gives them (to kill one as a lost
node would), and stop a server the tests started (its whole process group, and nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop_group(process: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM to ``process``'s group (started with ``start_new_session``), SIGKILL if it outlives ``timeout``."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def pids_titled(title: str) -> list[int]:
    """Processes whose command line starts with ``title`` (``ray::RayTrainWorker``, ``ray::<task>``), from /proc."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(title.encode()):
                pids.append(int(entry))
        except OSError:
            pass
    return sorted(pids)
