"""Ray Data's scheduling loop, paced while its consumer has data to train on.

Ray Data's streaming executor (Ray 2.60) loops without waiting whenever it has no running task: once
the read-ahead budget (:func:`pipeline.jobs.ingest.read_ahead`) is full and the blocks wait for the
trainer, its thread spins on one CPU core until the trainer takes a block (the prior fit's Ray Data
coordinator at 74% of a core at 30 M rows, measured by ``benchmarks/ingest_scale.py``; ray#65060 notes
the same spin). On a 2-core machine that core is half the training step's.

:class:`PacedExecution` is an execution callback (``DataContext.custom_execution_callback_classes``,
shipped with the dataset to whichever process runs its executor): after a step of the loop that changed
nothing (no task submitted or finished, no block received, made or handed on by any operator), it
sleeps ``PAUSE_S``. A step that does anything is followed by the next at once, so a block the trainer
frees room for is read at most ``PAUSE_S`` later, while the read-ahead still holds blocks for it.
(The executor's own "consumer idling" signal does not help here: behind a streaming split its output
queue is always empty.) ``PacedExecution.pauses`` counts the pauses taken in this process.
"""

from __future__ import annotations

import time

PAUSE_S = 0.02  # at most 50 idle loop steps a second, instead of thousands

try:  # Ray 2.60's interface, from an internal module
    from ray.data._internal.execution.execution_callback import ExecutionCallback
except ImportError:  # pragma: no cover - a Ray release that moved it: the stream then runs unpaced
    ExecutionCallback = object
AVAILABLE = ExecutionCallback is not object  # whether PacedExecution can be installed in this Ray


class PacedExecution(ExecutionCallback):  # type: ignore[misc, valid-type]
    """See the module docstring."""

    pauses = 0  # idle steps paced in this process

    def __init__(self) -> None:
        self._last: tuple | None = None

    def on_execution_step(self, executor) -> None:
        progress = _progress(executor)
        idle, self._last = progress is not None and progress == self._last, progress
        if idle:
            type(self).pauses += 1
            time.sleep(PAUSE_S)


def _progress(executor) -> tuple | None:
    """What the loop has done so far, operator by operator (tasks submitted and finished, blocks received,
    made and handed on): unchanged after a step means the step did nothing. None where this Ray's executor
    does not expose it."""
    try:
        return tuple((m.num_tasks_submitted, m.num_tasks_finished, m.num_inputs_received, m.num_task_outputs_generated,
                      m.num_outputs_taken) for m in (op.metrics for op in executor._topology))
    except (AttributeError, TypeError):
        return None
