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


def publish_named_until_done(store_uri: str, endpoint: str, writer: int, count: int, folder: str, barrier,
                             results) -> None:
    """Through a faulty endpoint: register ``count`` named priors (each with its own small artifact, each
    moving the core alias), retrying a whole publish after a ``StoreError`` as an operator's rerun would."""
    import os

    from pipeline.errors import StoreError
    from pipeline.registry import Registry
    from pipeline.storage import S3Options, Store

    options = S3Options(endpoint_url=endpoint, connect_timeout=1, read_timeout=2, retries=2)
    registry = Registry(Store.open(store_uri, options))
    barrier.wait(timeout=300)
    ids, failures = [], 0
    try:
        for i in range(count):
            artifact = os.path.join(folder, f"w{writer}-{i}.bin")
            with open(artifact, "wb") as f:
                f.write(f"weights of writer {writer}, record {i}".encode())
            for _ in range(40):
                try:
                    ids.append(registry.register("prior", name=f"w{writer}-r{i}", settings={"writer": writer, "i": i},
                                                 config={"writer": writer, "seq": i}, artifact=artifact).id)
                    break
                except StoreError:
                    failures += 1
        results.put((writer, ids, failures, None))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put((writer, ids, failures, f"{type(error).__name__}: {error}"))
