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
from pipeline.storage import Store
from pipeline.storage.layout import RAY_RUNS

# Logical CPUs the embedded Ray adds for Ray Data's read tasks: a Train worker group that takes every
# core would otherwise leave them no slot, and the fit would wait for data forever.
INGEST_CPUS = 1
CONNECT_TIMEOUT_S = 10.0  # for the TCP probe of a cluster address


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
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


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """``ray.init`` once: to ``address`` / ``$RAY_ADDRESS`` if given, else a local instance.

    Ray's own output stays in its log folder (:func:`logs_folder`): its workers' and actors' lines are not
    forwarded to this process, and its notices and warnings are not printed (its errors are), so a command's
    output is its own lines. Each flowprior job brings its tasks' lines back itself (a site step's with its
    result and in its log under the store's run folder; a prior fit's reports through the store, see
    :mod:`pipeline.jobs.prior_fit`). With ``verbose`` Ray forwards everything, as it does by default.

    Returns True for the embedded local Ray (fixed resources), False for a cluster (whose
    autoscaler may add nodes, so its current resources are not a limit).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    quiet = {} if verbose else {"logging_level": logging.ERROR}
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=verbose, **quiet)
    else:
        ray.init(num_cpus=(num_cpus or os.cpu_count()) + INGEST_CPUS, log_to_driver=verbose, **quiet)
    if not verbose:
        _raylet_warnings_to_log()
    return not address


def _raylet_warnings_to_log() -> None:
    """Send the raylet's warnings (``WARNING: 8 PYTHON worker processes have been started ...``), which Ray prints
    in the driver even without ``log_to_driver``, to ``flowprior-driver.log`` in its log folder instead. Its other
    messages (a worker killed for memory, a node lost) are still printed. Ray 2.60 has no setting for this: its
    driver prints them through ``ray._private.worker.print_to_stdstream``, which is wrapped here."""
    from ray._private import worker

    printed = worker.print_to_stdstream
    if getattr(printed, "flowprior", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        lines = data.get("lines") or []
        folder = logs_folder()
        if data.get("pid") == "raylet" and folder and all(str(line).startswith("WARNING") for line in lines):
            with open(os.path.join(folder, "flowprior-driver.log"), "a") as log:
                log.writelines(f"(raylet) {line}\n" for line in lines)
            return
        printed(data, ignore_prefix)

    print_to_stdstream.flowprior = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


def logs_folder() -> str | None:
    """This node's Ray log folder (its workers' and actors' output, Ray's own logs), if Ray runs here."""
    import ray

    if not ray.is_initialized():
        return None
    from ray._private.worker import global_worker  # no public accessor in Ray 2.60

    node = getattr(global_worker, "node", None)
    return node.get_logs_dir_path() if node is not None else None


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
