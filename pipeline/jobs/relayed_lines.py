"""Lines a remote worker says, relayed to the driver through the store instead of Ray's log forwarding.

Ray's forwarding (``log_to_driver``) brings every worker's and actor's output, Ray's own included, with
``(pid=...)`` prefixes and colour codes; flowprior's commands turn it off (``runtime.connect``). A job
whose worker has progress to show writes each line as its own object under a folder of its run
(:class:`LineDrop`, create-if-absent, so it works the same on local disk and S3), and the driver prints
them as they appear (:func:`relayed`), a second or so later.

    with relayed(store, f"ray-runs/{name}/lines", say):
        trainer.fit()   # a worker: LineDrop(store, f"ray-runs/{name}/lines").say("[prior fit] 250/2000 steps")
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from pipeline.errors import StoreError
from pipeline.progress import Say
from pipeline.storage import AlreadyExists, Store

POLL_S = 1.0


class LineDrop:
    """The worker's side: each line an object ``<folder>/<unix ns>-<n>.txt`` (names sort in time order)."""

    def __init__(self, store: Store, folder: str) -> None:
        self.store, self.folder, self.count = store, folder, 0

    def say(self, line: str) -> None:
        """Publish ``line``; a store that fails loses the line, never the job."""
        self.count += 1
        try:
            self.store.create(f"{self.folder}/{time.time_ns():020d}-{self.count:06d}.txt", line.encode())
        except (AlreadyExists, StoreError):
            pass


def _new_lines(store: Store, folder: str, seen: set[str]) -> list[str]:
    try:
        names = sorted(set(store.list(folder)) - seen)
    except StoreError:
        return []  # the next poll tries again
    seen.update(names)
    return [store.read(f"{folder}/{name}").decode() for name in names]


@contextmanager
def relayed(store: Store, folder: str, say: Say, poll_s: float = POLL_S) -> Iterator[None]:
    """Say every line that appears under ``folder`` while the block runs (lines already there at the start,
    from an earlier attempt of the run, are not said again), and the last ones once it ends."""
    seen = set(store.list(folder))
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(poll_s):
            for line in _new_lines(store, folder, seen):
                say(line)

    thread = threading.Thread(target=follow, name="relayed-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for line in _new_lines(store, folder, seen):
            say(line)
