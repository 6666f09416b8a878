"""Find this machine's Ray worker processes by the title Ray gives them, to kill one as a lost node would."""

from __future__ import annotations

import os
from pathlib import Path


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
