"""Connecting to Ray, and pointing Ray's storage at the store.

Embedded default: with no address (flag or ``RAY_ADDRESS``) a local Ray starts in-process with
this machine's CPUs. Production: ``ray job submit`` sets ``RAY_ADDRESS`` for the entrypoint, so
the same command joins the cluster.
"""

from __future__ import annotations

import os

from pipeline.storage import Store

# Logical CPUs the embedded Ray adds for Ray Data's read tasks: a Train worker group that takes every
# core would otherwise leave them no slot, and the fit would wait for data forever.
INGEST_CPUS = 1


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """``ray.init`` once: to ``address`` / ``$RAY_ADDRESS`` if given, else a local instance.

    Returns True for the embedded local Ray (fixed resources), False for a cluster (whose
    autoscaler may add nodes, so its current resources are not a limit).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=(num_cpus or os.cpu_count()) + INGEST_CPUS, log_to_driver=True)
    return not address


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available(resource: str) -> float:
    """Total ``resource`` (``CPU``, ``GPU``) of the connected cluster."""
    import ray

    return float(ray.cluster_resources().get(resource, 0.0))


def storage_for(store: Store, folder: str = "ray-runs") -> tuple[str, object | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train / Tune runs kept under ``store``."""
    if store.is_local:
        return f"{store.uri}/{folder}", None
    import pyarrow.fs

    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.backend.fs))
    return f"{store.backend.root}/{folder}", fs
