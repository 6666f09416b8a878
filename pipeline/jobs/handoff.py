"""What the validating pass hands to a prior fit that started before it finished.

    handoff = Handoff.start()                       # driver: before the trainer starts
    handoff.put(space=space.arrays(), heldout=z)    # driver: when the validating pass is done ...
    handoff.fail("x.parquet: 1 rows have NaN ...")  # ... or when it found a bad row
    handoff.get("space")                            # a read task or worker: blocks until one of the two

The core prior fit (:mod:`pipeline.jobs.prior_fit`) starts Ray Train and the validating pass
together: the Train workers start, build their model and ask Ray Data for rows while the pass reads
the files, and Ray Data's read tasks wait here for the map to prior space the pass produces. A bad
row makes every waiter's :meth:`Handoff.get` raise :class:`HandoffFailed`, so no training step runs; the
driver then raises the pass's own error (file, column, row).

The values live in one actor (no CPU) that the driver holds for the fit: an object handed over once,
read by every read task (one call per file) and by rank 0 (the held-out sample). Each method imports Ray
itself: :mod:`pipeline.jobs.ingest` imports this module, and ``benchmarks/gpu_check.py`` imports ingest's reader
on machines without Ray.
"""

from __future__ import annotations

import asyncio


class HandoffFailed(RuntimeError):
    """The validating pass failed: there is nothing to train on (the driver raises the pass's error)."""


class _Slot:
    """The actor's state: values set once, or a failure; readers wait (coroutines) until either."""

    def __init__(self) -> None:
        self._done = asyncio.Event()
        self._values: dict = {}
        self._failure: str | None = None

    async def put(self, values: dict) -> None:
        self._values = values
        self._done.set()

    async def fail(self, message: str) -> None:
        self._failure = message
        self._done.set()

    async def get(self, key: str) -> object:
        await self._done.wait()
        if self._failure is not None:
            raise HandoffFailed(self._failure)
        return self._values[key]

    async def failure(self) -> str | None:
        """The failure, if the pass failed (without waiting)."""
        return self._failure


class Handoff:
    """A handle on one fit's slot (picklable: read tasks and workers get it in their arguments)."""

    WAITERS = 10_000  # readers the actor serves at once (coroutines, idle while they wait)

    def __init__(self, actor) -> None:
        self._actor = actor

    @classmethod
    def start(cls) -> "Handoff":
        import ray

        return cls(ray.remote(num_cpus=0, max_concurrency=cls.WAITERS)(_Slot).remote())

    def put(self, **values: object) -> None:
        import ray

        ray.get(self._actor.put.remote(values))

    def fail(self, message: str) -> None:
        import ray

        ray.get(self._actor.fail.remote(message))

    def get(self, key: str) -> object:
        """The value ``key``, once the pass has put it; raises :class:`HandoffFailed` if the pass failed."""
        import ray

        try:
            return ray.get(self._actor.get.remote(key))
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, HandoffFailed):
                raise HandoffFailed(str(error.cause)) from None
            raise

    def failure(self) -> str | None:
        """The pass's failure, if it failed by now."""
        import ray

        return ray.get(self._actor.failure.remote())

    def close(self) -> None:
        import ray

        ray.kill(self._actor)
