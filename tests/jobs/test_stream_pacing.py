"""Ray Data's scheduling loop paced while its consumer is slower than the reads (a real local Ray)."""

import threading

from pipeline.jobs.ingest import read_ahead
from pipeline.jobs.stream_pacing import PacedExecution


def test_an_idle_loop_pauses_and_every_row_still_arrives(local_ray):
    """A slow consumer with 1 MiB of read-ahead leaves the loop with nothing to do between its batches: it
    pauses there (instead of spinning), and the stream still delivers every row once."""
    import ray.data

    dataset = ray.data.range(100_000, override_num_blocks=20).map_batches(lambda batch: batch)
    dataset.context.custom_execution_callback_classes = [PacedExecution]
    dataset.context.execution_options = read_ahead(1)
    before, seen = PacedExecution.pauses, []
    trainer_step = threading.Event()  # never set: each wait stands for a training step
    for batch in dataset.iter_batches(batch_size=10_000, batch_format="numpy"):
        seen.append(batch["id"])
        trainer_step.wait(0.05)
    assert sorted(int(i) for b in seen for i in b) == list(range(100_000))
    assert PacedExecution.pauses > before
