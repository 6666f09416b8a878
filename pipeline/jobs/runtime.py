"""Connecting to Ray, and pointing Ray's storage at the store.

Embedded default: with no address (flag or ``RAY_ADDRESS``) a local Ray starts in-process with
this machine's CPUs. Production: ``ray job submit`` sets ``RAY_ADDRESS`` for the entrypoint, so
the same command joins the cluster.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlsplit

from pipeline.errors import RayUnreachable, SpecError
from pipeline.registry.retention import RAY_RUNS
from pipeline.storage import Store

# Logical CPUs the embedded Ray adds for Ray Data's read tasks: a Train worker group that takes every
# core would otherwise leave them no slot, and the fit would wait for data forever.
INGEST_CPUS = 1
CONNECT_TIMEOUT_S = 10.0  # for the TCP probe of a cluster address


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a ``host:port`` / ``ray://host:port`` address that accepts no TCP connection within
    ``timeout`` s, before ``ray.init`` blocks on it (``auto`` and ``local`` are Ray's to resolve)."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise SpecError(f"Ray address {address!r}: expected host:port, ray://host:port, auto or local")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise RayUnreachable(f"no Ray cluster answers at {address} ({type(error).__name__}: {error}); check the "
                             "address (--address or $RAY_ADDRESS) and that the head node is up") from None


def connect(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """``ray.init`` once: to ``address`` / ``$RAY_ADDRESS`` if given, else a local instance. Without
    ``log_to_driver`` (the site commands, which print their own summary) the workers' output stays in their log
    files and Ray's own start-up notices are not printed (its errors still are).

    Returns True for the embedded local Ray (fixed resources), False for a cluster (whose
    autoscaler may add nodes, so its current resources are not a limit).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    quiet = {} if log_to_driver else {"logging_level": logging.ERROR}
    if address:
        probe(address)
        ray.init(address=address, log_to_driver=log_to_driver, **quiet)
    else:
        ray.init(num_cpus=(num_cpus or os.cpu_count()) + INGEST_CPUS, log_to_driver=log_to_driver, **quiet)
    return not address


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: Linux's ``VmHWM`` (its own, where ``ru_maxrss``
    keeps the parent's peak across a fork and exec), else ``ru_maxrss``."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def available(resource: str) -> float:
    """Total ``resource`` (``CPU``, ``GPU``) of the connected cluster."""
    import ray

    return float(ray.cluster_resources().get(resource, 0.0))


def storage_for(store: Store, folder: str = RAY_RUNS) -> tuple[str, object | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train / Tune runs kept under ``store``."""
    if store.is_local:
        return f"{store.uri}/{folder}", None
    import pyarrow.fs

    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.backend.fs))
    return f"{store.backend.root}/{folder}", fs
