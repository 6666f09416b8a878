"""The per-worker loop of the core prior fit (runs inside Ray Train workers).

Each worker streams only its own shard of the training rows (``get_dataset_shard``: Ray Data's
equal streaming split, already in prior space) and trains with :func:`~pipeline.method.training.train_loop`,
the loop every prior fit runs; DDP averages the gradients, so ``workers x batch`` rows make one
step. Rank 0 evaluates the EMA model on the held-out sample and writes the checkpoint at every
report (:mod:`pipeline.method.training_state`); a restarted group resumes from the last one (weights,
EMA, optimiser state, step, epoch). The driver gives every worker one typed :class:`WorkerConfig`.

**How batches are drawn.** Epoch by epoch: in each epoch a worker reads its share of the rows
once (file order reshuffled per epoch, rows mixed in a local shuffle buffer seeded by seed, epoch
and rank) and trains on full batches. A checkpoint records the epoch in progress; a resumed run
starts the *next* epoch, with its own file order and shuffle seed, so it does not replay the
batch sequence it already trained on (the unread rest of the interrupted epoch comes back in the
next epoch's order, as every row does once per epoch). A shard that fits ``cache_mb`` is kept in
the worker after its first epoch and later epochs are seeded permutations of it (no per-epoch
start-up of the Ray Data pipeline); a larger one streams every epoch.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from pipeline.data.split import digest
from pipeline.errors import DataError
from pipeline.jobs.relayed_lines import LineDrop
from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.metrics import heldout_metrics
from pipeline.method.training import EMA, new_training, train_loop
from pipeline.method.training_state import load_training_state, save_training_state
from pipeline.progress import status

if TYPE_CHECKING:
    from pipeline.jobs.handoff import Handoff


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of one fit is given by the driver (:mod:`pipeline.jobs.prior_fit`)."""

    velocity: VelocityConfig | None  # None: the validating pass's ("velocity"), where only it knows the dimension
    fit: FitConfig
    batch_per_worker: int  # rows per step on each worker: the global batch over the workers
    seed: int
    shuffle_buffer: int  # rows in the worker's local shuffle buffer
    cache_mb: int  # a shard up to this size is kept after its first epoch (else streamed every epoch)
    report_every: int  # steps between reports, held-out evaluations and checkpoints
    eval_samples: int  # prior samples compared with the held-out points at each report
    threads: int  # torch threads: the worker's CPUs
    handoff: Handoff  # the validating pass's results: "heldout", the sample rank 0 evaluates on ((k, d1) float32)
    sinks: tuple = ()  # where rank 0 writes each report, ``sink.write(step, metrics)`` (TensorBoard, MLflow)
    lines: LineDrop | None = None  # rank 0's progress lines, relayed to the driver


# what a report's progress line shows
SHOWN = ("train_fm", "heldout_fm", "knn_nll", "sliced_w2", "samples_per_s", "data_wait", "epoch", "resumes")


def say(line: str, relay: LineDrop | None = None) -> None:
    """Progress to the worker's real stdout (its log; ``print`` is patched by Ray Train into its logger and
    would show twice) and, through ``relay``, to the driver (:mod:`pipeline.jobs.relayed_lines`)."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()
    if relay is not None:
        relay.say(line)


def epoch_batches(shard, state: dict, batch: int, buffer: int, cache_bytes: int, seed: int, rank: int,
                  device: torch.device, epochs: list) -> Iterator[torch.Tensor]:
    """Endless full batches ``(batch, d1)`` of this worker's shard, epoch after epoch from
    ``state["epoch"] + 1`` (see the module docstring). Each streamed epoch appends
    ``{"epoch", "rows", "digest"}`` (every row this worker read, and their hash digest) to ``epochs``.

    A shard of at most ``cache_bytes`` is kept after its first epoch, and later epochs are seeded
    permutations of it: small fits do not pay Ray Data's start-up once per epoch."""
    cached: torch.Tensor | None = None
    while True:
        state["epoch"] += 1
        epoch_seed = (seed * 1_000_003 + state["epoch"] * 1_009 + rank) % 2**32
        if cached is not None:
            order = torch.randperm(len(cached), generator=torch.Generator().manual_seed(epoch_seed)).to(device)
            for start in range(0, len(cached) - batch + 1, batch):
                yield cached[order[start:start + batch]]
            continue
        rows, total, blocks = 0, 0, []
        for b in shard.iter_batches(batch_size=batch, batch_format="numpy", local_shuffle_buffer_size=buffer,
                                    local_shuffle_seed=epoch_seed):
            rows, total = rows + len(b["z"]), (total + digest(b["row"].view(np.uint64))) % 2**64
            if blocks is not None:
                blocks = blocks + [b["z"]] if rows * b["z"].shape[1] * 4 <= cache_bytes else None
            if len(b["z"]) == batch:  # the last, partial batch of an epoch is read (and counted), not trained on
                yield torch.from_numpy(b["z"]).to(device, non_blocking=True)
        if rows == 0:
            raise DataError(f"worker {rank} received no training rows")
        epochs.append({"epoch": state["epoch"], "rows": rows, "digest": f"{total:016x}"})
        if blocks is not None and rows >= batch:
            cached = torch.from_numpy(np.concatenate(blocks)).to(device)  # (rows, d1)


def timed_first(batches: Iterator[torch.Tensor], at: list) -> Iterator[torch.Tensor]:
    """``batches``, noting in ``at`` the wall-clock time the first one arrived (time to first step)."""
    first = next(batches)
    at.append(time.time())
    yield first
    yield from batches


def _gather(value: object) -> list:
    """``value`` from every rank, in rank order (all ranks call it at the same step)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def train_loop_per_worker(config: dict) -> None:
    """One worker's fit (see the module docstring). ``config`` is ``{"worker": WorkerConfig}``: Ray Train hands
    its ``train_loop_config`` to this function as given, but also exports it as the run's settings, which must
    be a dict; so the typed config travels as that dict's one entry.

    The worker starts while the validating pass still runs: its first batch waits for the pass (Ray Data's read
    tasks wait for the map to prior space, :mod:`pipeline.jobs.handoff`). If the pass finds a bad row, the worker
    returns without a step or a checkpoint (no restart would change that) and the driver says why."""
    worker: WorkerConfig = config["worker"]
    try:
        _fit_shard(worker)
    except Exception:
        if worker.handoff.failure() is not None:
            return
        raise


def _fit_shard(worker: WorkerConfig) -> None:
    """The fit on this worker's shard: model, resume, the stream of batches, the training loop."""
    import ray.train
    import ray.train.torch

    entered = time.time()  # when Ray Train started this function (the start-up timeline)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(worker.threads)
    device = ray.train.torch.get_device()
    velocity = worker.velocity or worker.handoff.get("velocity")  # a list column of any length: after the pass
    # identical initial weights on every rank; on the device before the optimiser and any resume
    model, ema, optimiser = new_training(velocity, worker.fit, device, worker.seed)
    state = _resumed(worker, model, ema, optimiser, rank)
    model = ray.train.torch.prepare_model(model)  # DDP around the model, already on its device
    epochs: list[dict] = []
    first_step: list[float] = []
    state["timeline_unix"] = {"worker_entered": entered, "data_asked": time.time()}
    shard = ray.train.get_dataset_shard("train")
    batches = timed_first(epoch_batches(shard, state, worker.batch_per_worker,
                                        worker.shuffle_buffer, worker.cache_mb << 20, worker.seed, rank, device,
                                        epochs), first_step)
    report = _reporter(worker, state, model, ema, optimiser, device, epochs, first_step)
    # the noise draws are a function of (seed, rank, step), so a resumed run draws fresh ones
    generator = torch.Generator(device=device).manual_seed(worker.seed * 100_003 + rank * 1_009 + state["step"])
    train_loop(model, optimiser, ema, batches, worker.fit, report, every=worker.report_every,
               start_step=state["step"], generator=generator)
    if rank == 0:
        _ray_data_statistics(shard.stats(), worker.lines)


def _ray_data_statistics(text: str, relay: LineDrop | None) -> None:
    """Ray Data's statistics of rank 0's stream, to its log; what its training thread waited for (the
    iterator's breakdown) also to the driver."""
    sys.__stdout__.write(f"[prior fit] Ray Data's statistics of rank 0's stream:\n{text}\n")
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("Dataset iterator time breakdown")), len(lines))
    for line in lines[first:]:
        if line.strip():
            say(f"[prior fit] Ray Data: {line.strip()}", relay)


def _resumed(worker: WorkerConfig, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer,
             rank: int) -> dict:
    """The run's state: a fresh one, or the last checkpoint's, restored with the weights, EMA and optimiser."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return {"step": 0, "epoch": 0, "history": [], "seconds": 0.0, "shards": []}
    with checkpoint.as_directory() as folder:
        state = {"epoch": 0, "shards": [], **load_training_state(folder, model, ema, optimiser)}
    state["resumes"] = state.get("resumes", 0) + 1
    if rank == 0:
        say(f"[prior fit] resumed from step {state['step']} (epoch {state['epoch']}); continuing with epoch "
            f"{state['epoch'] + 1}", worker.lines)
    return state


def _reporter(worker: WorkerConfig, state: dict, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer,
              device: torch.device, epochs: list, first_step: list) -> Callable[[dict], None]:
    """The loop's ``on_report`` on this worker: every rank reports its metrics and what it read; rank 0 adds
    the held-out metrics (on the validating pass's held-out sample, fetched at its first report), logs them
    (:func:`_log`) and writes the checkpoint."""
    import ray
    import ray.train
    from ray.train import Checkpoint

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    seconds_before = state["seconds"]
    heldout: list[torch.Tensor] = []  # rank 0's held-out sample, once fetched

    def report(metrics: dict) -> None:
        state["first_step_unix"] = first_step[0]  # when this run's first batch arrived (wall clock)
        metrics = {**metrics, "resumes": state.get("resumes", 0), "epoch": state["epoch"],
                   "samples_per_s": metrics["samples_per_s"] * world, "seconds": seconds_before + metrics["seconds"]}
        # what each worker read in its first full epoch of this run, and where it ran
        shards = _gather({"rank": rank, "node": node, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                          / 1024, **(epochs[0] if epochs else {})})
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        heldout[:] = heldout or [torch.tensor(worker.handoff.get("heldout"), device=device)]  # a bounded sample
        metrics.update(heldout_metrics(ema.model, heldout[0], worker.seed, worker.eval_samples))
        state.update(step=metrics["step"], history=[*state["history"], metrics], seconds=metrics["seconds"],
                     shards=shards if all("rows" in s for s in shards) or not state["shards"] else state["shards"])
        _log(worker, metrics)
        with tempfile.TemporaryDirectory() as folder:
            save_training_state(folder, getattr(model, "module", model), ema, optimiser, state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    return report


def _log(worker: WorkerConfig, metrics: dict) -> None:
    """Rank 0's progress line for a report, and the report to each sink (TensorBoard events under the run's
    folder in the store; an MLflow run)."""
    say(f"[prior fit] {status(metrics['step'], worker.fit.steps, metrics['seconds'], 'steps')}  " + "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k in SHOWN), worker.lines)
    for sink in worker.sinks:
        try:
            sink.write(metrics["step"], metrics)
        except Exception as error:  # noqa: BLE001 - the run matters more than its plots
            say(f"[prior fit] could not write to {sink}: {type(error).__name__}: {error}", worker.lines)
