"""What the benchmarks record about the machine they ran on (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Callable, Sequence


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def on_local_and_s3(measure: Callable[[str], dict], backends: Sequence[str] = ("local", "s3")) -> dict:
    """``{"local": measure(a fresh local store URI), "s3": measure(a fresh store on SeaweedFS on 127.0.0.1)}``
    (of ``backends``), one after the other in one run (the S3 server shares this machine's cores with the
    client)."""
    from tests.support.s3server import SeaweedServer  # the scripts put the repository root on sys.path

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "local" in backends:
            print(f"local disk ({tmp}) ...", flush=True)
            results["local"] = measure(str(Path(tmp) / "store"))
        if "s3" not in backends:
            return results
        server = SeaweedServer(Path(tmp) / "seaweed").start()
        try:
            os.environ.update(server.env)
            server.make_bucket("bench")
            print(f"SeaweedFS S3 ({server.endpoint}) ...", flush=True)
            results["s3"] = measure("s3://bench/store")
        finally:
            server.stop()
    return results


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "s3_server": "SeaweedFS 4.48 (weed mini) on 127.0.0.1"}
