"""Fleet-scale feature ingest for the core prior fit: statistics from Ray tasks, training rows from Ray Data.

    scan = scan_features("s3://bucket/features/", filters={"year": 2014})   # driver: listing + one footer
    stats = gather_stats(scan, split, sample=10_000, validated=store)  # Ray tasks: validate every row, moments, ...
    space = PriorSpace.fit(stats.train, ...)            # driver: the map to prior space from d^2 numbers
    dataset = training_dataset(scan, split, space)      # Ray Data: one task per file, read -> to prior space

The driver never holds the data: it holds the listing, the moments of the training rows
(``d^2`` float64), and a bounded sample of held-out rows for evaluation (the ``sample`` held-out
rows with the smallest row hashes: a uniform sample, the same however the work was divided).

**Validating pass.** ``gather_stats`` reads every row once, with the columns and filters pushed
down, in one Ray task per group of files; a NaN/inf/null, a wrong type or a mixed dimension is a
``DataError`` naming the file, column and row before any training step. The same pass gives the
moments (count, mean, centred cross-products, merged exactly across tasks) from which the
normaliser and the PCA basis are fitted. It costs one extra read of the data (measured in
``benchmarks/ingest_scale.py``), once per file: each file's statistics are kept in the store by its
bytes and how it is read (:mod:`pipeline.jobs.validated_files`), and a later fit does not read it again.

**Training stream.** Ray Data runs the same reader, file by file, and maps each block to prior space;
it reads at most :func:`read_ahead` ahead of the trainer, and its scheduling loop pauses while it has
nothing to do (:mod:`pipeline.jobs.stream_pacing`).

**The split.** A row is held out when its hash (``pipeline.data.split``) says so: a fixed function
of its values, so the statistics pass, the training stream and any later reader agree on it
without sharing state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.data.fingerprint import SourceFile
from pipeline.data.scan import FeatureScan
from pipeline.data.split import Split, digest
from pipeline.errors import DataError
from pipeline.jobs import validated_files
from pipeline.jobs.handoff import Handoff
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace, to_prior_space
from pipeline.progress import Progress, Say
from pipeline.storage import Store

TASKS_PER_CPU = 2  # statistics tasks per cluster CPU: enough to balance files of uneven size
BLOCK_BYTES = 4 << 20  # Ray Data blocks of training rows in prior space: the first reaches a worker after a few
# of a file's streamed blocks, not the whole file (Ray Data's default is 128 MiB)


@dataclass
class FeatureStats:
    """What one pass over (part of) the data leaves: training-row moments and held-out sample."""

    train: Moments | None = None  # moments of the training rows
    heldout_rows: int = 0
    sample: np.ndarray | None = None  # (k, d) float32 held-out rows with the smallest hashes
    sample_hash: np.ndarray | None = None  # (k,) uint64
    train_digest: int = 0  # sum of the training rows' hashes mod 2^64 (see pipeline.data.split.digest)
    rows_dropped: int = 0
    first_file: str | None = None  # where the dimension was first seen (for error messages)
    files: int = 0
    bytes: int = 0
    files_validated_before: int = 0  # files whose statistics came from an earlier pass (validated_files)

    @property
    def train_rows(self) -> int:
        return self.train.n if self.train is not None else 0

    def merge(self, other: "FeatureStats", sample: int) -> "FeatureStats":
        if other.train is None:
            return FeatureStats(**{**self.__dict__, "rows_dropped": self.rows_dropped + other.rows_dropped,
                                   "files": self.files + other.files, "bytes": self.bytes + other.bytes,
                                   "files_validated_before": self.files_validated_before
                                   + other.files_validated_before})
        if self.train is None:
            return other.merge(self, sample)
        if other.train.dim != self.train.dim:
            raise DataError(f"{other.first_file}: feature columns of d={other.train.dim} differ from "
                            f"{self.first_file}'s (d={self.train.dim})")
        hashes = np.concatenate([self.sample_hash, other.sample_hash])
        keep = np.argsort(hashes, kind="stable")[:sample]
        return FeatureStats(
            train=self.train.merge(other.train), heldout_rows=self.heldout_rows + other.heldout_rows,
            sample=np.concatenate([self.sample, other.sample])[keep], sample_hash=hashes[keep],
            train_digest=(self.train_digest + other.train_digest) % 2**64,
            rows_dropped=self.rows_dropped + other.rows_dropped, first_file=self.first_file,
            files=self.files + other.files, bytes=self.bytes + other.bytes,
            files_validated_before=self.files_validated_before + other.files_validated_before)

    def arrays(self) -> dict[str, np.ndarray]:
        """One file's statistics as arrays (:mod:`pipeline.jobs.validated_files`)."""
        train = self.train or Moments.empty(0)
        sample = self.sample if self.sample is not None else np.zeros((0, train.dim), np.float32)
        hashes = self.sample_hash if self.sample_hash is not None else np.zeros(0, np.uint64)
        return {"n": np.array(train.n), "mean": train.mean, "m2": train.m2, "heldout_rows": np.array(self.heldout_rows),
                "sample": sample, "sample_hash": hashes, "train_digest": np.array(self.train_digest, np.uint64),
                "rows_dropped": np.array(self.rows_dropped)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: SourceFile) -> "FeatureStats":
        """The statistics :meth:`arrays` saved for the file ``source``, counted as validated before."""
        train = Moments(int(arrays["n"]), arrays["mean"], arrays["m2"]) if arrays["mean"].size else None
        return cls(train=train, heldout_rows=int(arrays["heldout_rows"]), sample=arrays["sample"],
                   sample_hash=arrays["sample_hash"], train_digest=int(arrays["train_digest"]),
                   rows_dropped=int(arrays["rows_dropped"]), first_file=source.display, files=1, bytes=source.size,
                   files_validated_before=1)


def file_stats(scan: FeatureScan, indices: list[int], split: Split, sample: int,
               validated: Store | None = None) -> FeatureStats:
    """The statistics of the files ``scan.files[i]`` for ``i`` in ``indices`` (one task's share): each one's
    from ``validated`` if an earlier pass kept them there (:mod:`pipeline.jobs.validated_files`), else read,
    every row validated, and kept there."""
    filesystem = scan.filesystem()
    total = FeatureStats()
    for i in indices:
        source = scan.files[i]
        key = validated_files.entry_key(scan, source, split, sample) if validated is not None else None
        kept = validated_files.load(validated, key) if key else None
        if kept is not None:
            stats = FeatureStats.from_arrays(kept, source)
        else:
            stats = one_file_stats(scan, source, split, sample, filesystem)
            if key:
                validated_files.save(validated, key, stats.arrays())
        total = total.merge(stats, sample)
    return total


def one_file_stats(scan: FeatureScan, source: SourceFile, split: Split, sample: int, filesystem) -> FeatureStats:
    """Stream one file: validate every row, and accumulate the training rows' moments and the held-out sample
    (its ``sample`` rows with the smallest hashes)."""
    total = FeatureStats(files=1, bytes=source.size)
    for x, dropped in scan.blocks(source, filesystem=filesystem):
        h, held = split.of(x)
        order = np.argsort(h[held], kind="stable")[:sample]
        block = FeatureStats(train=Moments.of(x[~held]), heldout_rows=int(held.sum()),
                             sample=x[held][order], sample_hash=h[held][order],
                             train_digest=digest(h[~held]), rows_dropped=dropped, first_file=source.display)
        total = total.merge(block, sample)
    return total


def gather_stats(scan: FeatureScan, split: Split, sample: int, say: Say = print,
                 validated: Store | None = None, beside_training: bool = False) -> FeatureStats:
    """:func:`file_stats` over every file as Ray tasks (1 CPU, 1 thread each; as many at once as the cluster
    has CPUs), merged as they finish; a data error in any file is raised as that ``DataError``. Prints progress.

    ``beside_training``: the pass runs while Ray Train starts workers that will wait for it
    (:mod:`pipeline.jobs.handoff`), on this one machine (the embedded Ray): its tasks ask for no CPU, so the
    workers' resources are not held back by them, and the driver keeps as many running as there are CPUs."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    tasks = min(len(scan.files), cpus * TASKS_PER_CPU)
    groups = [list(range(len(scan.files)))[k::tasks] for k in range(tasks)]  # round robin: sizes mix
    task = ray.remote(num_cpus=0 if beside_training else 1, max_retries=2, retry_exceptions=[OSError])(file_stats)
    scan_ref = ray.put(scan)
    window = cpus if beside_training else len(groups)
    pending = [task.remote(scan_ref, g, split, sample, validated) for g in groups[:window]]
    waiting = groups[window:]
    total, size = FeatureStats(), sum(f.size for f in scan.files)
    # nothing else prints while the files are checked: on a terminal, one line rewritten in place
    bar = Progress("prior fit", len(scan.files), "files checked", say, live=say is print)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        if waiting:
            pending.append(task.remote(scan_ref, waiting.pop(0), split, sample, validated))
        try:
            total = total.merge(ray.get(done[0]), sample)
        except ray.exceptions.RayTaskError as error:
            for ref in pending:
                ray.cancel(ref)
            cause = getattr(error, "cause", None)
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from None  # the file, column and row, without a remote traceback
            raise
        before = f", {total.files_validated_before} validated before" if total.files_validated_before else ""
        bar.update(total.files, f"{total.bytes / 2**20:,.0f} of {size / 2**20:,.0f} MiB, "
                                f"{total.train_rows + total.heldout_rows:,} rows{before}")
    return total


def read_to_prior(batch: dict, scan: FeatureScan, split: Split,
                  space: tuple[np.ndarray, np.ndarray, np.ndarray] | Handoff) -> Iterator[dict]:
    """One file (``batch["file"]``: its index in ``scan.files``) streamed block by block as the validating pass
    reads it (:meth:`FeatureScan.blocks`): its training rows in prior space ``z`` ``(b, d1)`` and their hashes
    ``row``. ``space``: :meth:`PriorSpace.arrays` (so the task never loads torch), or a :class:`Handoff` whose
    ``"space"`` they will be once the validating pass is done (the task waits for it)."""
    (index,) = batch["file"]
    if isinstance(space, Handoff):
        space = space.get("space")
    for x, _ in scan.blocks(scan.files[int(index)]):
        h, heldout = split.of(x)
        train = ~heldout
        yield {"z": to_prior_space(x[train], *space).astype(np.float32), "row": h[train].view(np.int64)}


def read_ahead(megabytes: int):
    """Ray Data's execution options for the training stream: at most ``megabytes`` of object store for the
    blocks read but not yet trained on. Without a bound Ray Data reads as far ahead as half the object store
    holds, and those reads take CPU from the training step they are not yet needed for."""
    from ray.data import ExecutionOptions, ExecutionResources

    return ExecutionOptions(resource_limits=ExecutionResources.for_limits(object_store_memory=megabytes << 20))


def training_dataset(scan: FeatureScan, split: Split, space: PriorSpace | Handoff, seed: int):
    """A ``ray.data`` dataset of the training rows in prior space (columns ``z``, ``row``): one task per
    file, in an order reshuffled every epoch (seeded), reading it as the validating pass did (only the
    feature columns, filters pushed down, in blocks of ``BATCH_ROWS``) and mapping each block to prior
    space (``space``, or the one a :class:`Handoff` will hold). Ray Data's own Parquet reader would first read
    every footer again, in actors it starts for that."""
    import ray.data
    from ray.data import RandomSeedConfig

    from pipeline.jobs import stream_pacing

    files = ray.data.from_items([{"file": i} for i in range(len(scan.files))], override_num_blocks=len(scan.files))
    arrays = space if isinstance(space, Handoff) else space.arrays()
    dataset = files.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True)).map_batches(
        read_to_prior, batch_size=1, fn_kwargs={"scan": scan, "split": split, "space": arrays})
    dataset.context.target_max_block_size = BLOCK_BYTES
    if stream_pacing.AVAILABLE:
        dataset.context.custom_execution_callback_classes = [stream_pacing.PacedExecution]
    return dataset
