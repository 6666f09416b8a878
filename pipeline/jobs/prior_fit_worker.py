"""The per-worker loop of the core prior fit (runs inside Ray Train workers).

Each worker streams only its own shard of the training rows (``get_dataset_shard``: Ray Data's
equal streaming split, already in prior space) and trains with :func:`~pipeline.method.training.train_loop`,
the loop every prior fit runs; DDP averages the gradients, so ``workers x batch`` rows make one
step. Rank 0 evaluates the EMA model on the held-out sample and writes the checkpoint at every
report; a restarted group resumes from the last one (weights, EMA, optimiser state, step, epoch).

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

import json
import os
import resource
import sys
import tempfile
import time
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.data.split import digest
from pipeline.jobs.relayed_lines import LineDrop
from pipeline.method.metrics import heldout_metrics
from pipeline.method.training import EMA, FitConfig, new_training, train_loop
from pipeline.method.velocity import VelocityConfig
from pipeline.progress import status

STATE_FILE, EMA_FILE, MODEL_FILE, OPTIMISER_FILE = "state.json", "ema.safetensors", "model.safetensors", "optimiser.pt"


def save_state(folder: str, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer, state: dict) -> None:
    for module, name in ((model, MODEL_FILE), (ema.model, EMA_FILE)):
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, os.path.join(folder, name))
    torch.save(optimiser.state_dict(), os.path.join(folder, OPTIMISER_FILE))  # tensors + numbers only
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(state, f)


def load_state(folder: str, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer) -> dict:
    """Restore from a checkpoint folder without executing code (safetensors, ``weights_only`` loads).

    Every tensor is read straight onto the model's device (build the model there first, see
    :func:`~pipeline.method.training.new_training`), so the optimiser's moments land beside their
    parameters on a GPU as on a CPU."""
    device = next(model.parameters()).device
    model.load_state_dict(load_file(os.path.join(folder, MODEL_FILE), device=str(device)))
    ema.model.load_state_dict(load_file(os.path.join(folder, EMA_FILE), device=str(device)))
    optimiser.load_state_dict(torch.load(os.path.join(folder, OPTIMISER_FILE), map_location=device, weights_only=True))
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


SHOWN = ("train_fm", "heldout_fm", "knn_nll", "sliced_w2", "samples_per_s", "epoch", "resumes")  # a report's line


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
            raise RuntimeError(f"worker {rank} received no training rows")
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
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    fit = FitConfig(**config["fit"])
    seed = config["seed"]

    heldout = torch.tensor(ray.get(config["heldout"]), device=device) if rank == 0 else None  # a bounded sample
    # identical initial weights on every rank; on the device before the optimiser and any resume
    model, ema, optimiser = new_training(VelocityConfig(**config["velocity"]), fit, device, seed)
    state = {"step": 0, "epoch": 0, "history": [], "seconds": 0.0, "shards": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = {"epoch": 0, "shards": [], **load_state(folder, model, ema, optimiser)}
        state["resumes"] = state.get("resumes", 0) + 1
        if rank == 0:
            say(f"[prior fit] resumed from step {state['step']} (epoch {state['epoch']}); continuing with epoch "
                f"{state['epoch'] + 1}", config["lines"])
    model = ray.train.torch.prepare_model(model)  # DDP around the model, already on its device
    node = ray.get_runtime_context().get_node_id()
    epochs: list[dict] = []
    batches = epoch_batches(ray.train.get_dataset_shard("train"), state, config["batch_per_worker"],
                            config["shuffle_buffer"], config["cache_mb"] << 20, seed, rank, device, epochs)
    seconds_before, first_step = state["seconds"], []
    batches = timed_first(batches, first_step)

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
        metrics.update(heldout_metrics(ema.model, heldout, seed, config["eval_samples"]))
        state.update(step=metrics["step"], history=[*state["history"], metrics], seconds=metrics["seconds"],
                     shards=shards if all("rows" in s for s in shards) or not state["shards"] else state["shards"])
        say(f"[prior fit] {status(metrics['step'], fit.steps, metrics['seconds'], 'steps')}  " + "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k in SHOWN),
            config["lines"])
        for sink in config["sinks"]:  # TensorBoard events under the run's folder in the store; an MLflow run
            try:
                sink.write(metrics["step"], metrics)
            except Exception as error:  # noqa: BLE001 - the run matters more than its plots
                say(f"[prior fit] could not write to {sink}: {type(error).__name__}: {error}", config["lines"])
        with tempfile.TemporaryDirectory() as folder:
            save_state(folder, getattr(model, "module", model), ema, optimiser, state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    # the noise draws are a function of (seed, rank, step), so a resumed run draws fresh ones
    generator = torch.Generator(device=device).manual_seed(seed * 100_003 + rank * 1_009 + state["step"])
    train_loop(model, optimiser, ema, batches, fit, report, every=config["report_every"], start_step=state["step"],
               generator=generator)
