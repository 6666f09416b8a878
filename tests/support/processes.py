"""Processes the tests start or kill: find Ray's workers by the title Ray gives them (to kill one as a lost
node would) and read what they print, stop a server the tests started (its whole process group, and nothing
else), and wait for a state with a deadline (never a guessed sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


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


def stdout_file(pid: int) -> Path | None:
    """The file process ``pid`` writes its stdout to, from /proc (a Ray worker's is its session's
    ``logs/worker-*.out``, written unbuffered: a line the task printed is there once ``print`` returned);
    None when the process is gone or its stdout is not a file."""
    try:
        path = Path(os.readlink(f"/proc/{pid}/fd/1"))
    except OSError:
        return None
    return path if path.is_file() else None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def poll(probe: Callable[[], T], until: Callable[[T], bool], timeout: float, every: float = 0.05) -> T:
    """``probe()`` every ``every`` s until ``until`` holds for its value or ``timeout`` s passed; the last
    value (so the caller's assertion shows what was left, e.g. the processes still alive)."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = probe()
    return value


def descendant_commands(pid: int) -> dict[int, str]:
    """The processes descended from ``pid`` (children, their children, ... even those that started their own
    session, as Flower's ``flower-superexec`` does), by pid: their command lines, from /proc."""
    parents, commands = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            pass
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found
