"""A registry writer process for the concurrency tests (importable by spawned processes)."""

from __future__ import annotations


def write_priors(store_uri: str, writer: int, count: int, barrier, results) -> None:
    """Wait for every writer, then register ``count`` priors, each moving the core alias."""
    from pipeline.registry import Registry
    from pipeline.storage import Store

    registry = Registry(Store.open(store_uri))
    barrier.wait(timeout=300)
    try:
        ids = [registry.register("prior", config={"writer": writer, "seq": i}).id for i in range(count)]
        results.put((writer, ids, None))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put((writer, [], f"{type(error).__name__}: {error}"))
