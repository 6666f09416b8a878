"""A run's scalars as TensorBoard event files in the store, written as the run goes.

Each report becomes one small event file, ``<folder>/events.out.tfevents.<unix time>.<host>.<step>``,
published create-if-absent like every object in the store (S3 cannot append); TensorBoard reads the
files of a folder in name order as one run, and a resumed run just adds files. The prior fit writes
under ``<store>/ray-runs/<run>/tensorboard/``; Tune writes each sweep trial's own event file into its
trial folder (``<store>/ray-runs/<experiment>/<trial>/``), so for either:

    tensorboard --logdir <store>/ray-runs/<run or experiment>
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from pipeline.storage import Store

FOLDER = "tensorboard"


class EventLog:
    def __init__(self, store: Store, folder: str) -> None:
        self.store, self.folder = store, folder

    def __str__(self) -> str:
        return f"TensorBoard events in {self.store.uri_of(self.folder)}"

    def write(self, step: int, scalars: dict[str, object]) -> None:
        """Publish the finite numbers of ``scalars`` at ``step`` as one event file (a failure is the caller's)."""
        from tensorboardX import SummaryWriter

        with tempfile.TemporaryDirectory() as tmp:
            writer = SummaryWriter(tmp, filename_suffix=f".{step:010d}")
            for name, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    writer.add_scalar(name, value, step)
            writer.close()
            for path in sorted(Path(tmp).iterdir()):
                self.store.put_file(f"{self.folder}/{path.name}", path)
