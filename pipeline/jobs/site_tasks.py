"""One site step as a Ray task: what it asks for, its log in the store, its retries, what it returns, and the
fleet command's end (the registry's snapshots brought up to date). :mod:`.sites` fans these tasks out."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from pipeline.errors import FlowpriorError, SpecError, StoreError
from pipeline.progress import Say
from pipeline.registry import record_files
from pipeline.storage import AlreadyExists, Store
from pipeline.storage.layout import RAY_RUNS
from pipeline.tracking import Tracking, tracked_registry

COMPACT_SITES = 64  # a fleet command over this many sites brings the registry's snapshots up to date at its end


def site_task_resources(gpu: float = 0.0) -> dict[str, float]:
    """What one site task asks Ray for: 1 CPU (its one torch thread), and ``gpu`` of a GPU if asked."""
    return {"CPU": 1.0, **({"GPU": gpu} if gpu else {})}


def run_folder(label: str) -> str:
    """A fresh run folder for one fleet command's logs: ``ray-runs/<label>-<UTC time>-<random>``."""
    return f"{RAY_RUNS}/{label}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class StepOutput:
    """What a step task returns: the step's result, and the lines it said (its last is its conclusion)."""

    value: object
    lines: list[str]


def run_step(step: Callable, spec, store: Store, kwargs: dict, log: str | None) -> StepOutput:
    """``step(spec, tracked_registry(store), **kwargs)`` in this process with its lines kept, printed (the worker's
    log) and saved under ``log`` in the store, whether the step succeeds or raises."""
    import ray
    import torch

    torch.set_num_threads(1)  # one CPU per task: threads beyond it only fight the other sites' tasks
    name = getattr(step, "__name__", "step")
    lines = [f"[site {spec.site}] {name} on node {ray.get_runtime_context().get_node_id()}, pid {os.getpid()}"]

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        value = step(spec, tracked_registry(store), say=say, **kwargs, **({"log": log} if log else {}))
    except BaseException as error:
        lines.append(f"[site {spec.site}] failed: {type(error).__name__}: {error}")
        raise
    finally:
        if log:
            save_log(store, log, lines)
    return StepOutput(value, lines)


def save_log(store: Store, key: str, lines: list[str]) -> None:
    try:
        store.create(key, "".join(f"{line}\n" for line in lines).encode())
    except AlreadyExists:
        pass  # an earlier attempt of this task wrote it
    except StoreError as error:  # the log is a convenience: the step's record and result stand without it
        print(f"could not save the step's log to {store.uri_of(key)}: {error}", flush=True)


def connect(address: str | None, gpu: float, say: Say) -> float:
    """Join or start Ray; the GPU share the tasks can have."""
    from pipeline.jobs import runtime

    if not 0 <= gpu <= 1:
        raise SpecError(f"gpu is a share of one GPU per site task, in [0, 1]; got {gpu!r}")
    if runtime.connect(address) and gpu and runtime.available("GPU") < gpu:
        say(f"[sites] asked for {gpu:g} GPU per site but this local Ray has no GPU: running on CPUs")
        return 0.0
    return gpu


def remote(function: Callable, retries: int, gpu: float):
    """``function`` as a Ray task with a site task's resources, ``retries`` for dead workers (never for an
    error the step raises), and MLflow's settings when tracking is on (each task copies its records)."""
    import ray

    if retries < 0:
        raise SpecError(f"retries must be >= 0, got {retries!r}")
    tracking = Tracking.from_env()
    shape = site_task_resources(gpu)
    return ray.remote(num_cpus=shape["CPU"], num_gpus=shape.get("GPU", 0), max_retries=retries,
                      retry_exceptions=False,
                      **({"runtime_env": {"env_vars": tracking.env()}} if tracking else {}))(function)


def cause(error: Exception) -> Exception:
    """The error a site's step raised (not Ray's wrapper with the worker's traceback in its message: a project
    error is one line for the user); a dead worker's or a lost node's error as Ray reports it."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        return error.cause if isinstance(error.cause, FlowpriorError) else error.as_instanceof_cause()
    return error


def summary(lines: list[str], verbose: bool) -> list[str]:
    """The lines of a finished step to print: all with ``verbose``, else its warnings and its conclusion."""
    return lines if verbose else [line for line in lines[:-1] if "warning:" in line] + lines[-1:]


def compact_registry(store: Store, sites: int, say: Say) -> None:
    """After a fleet command over ``COMPACT_SITES`` sites or more: the registry's snapshots brought up to date
    (``record_files.compact``), so the next ``fleet status`` reads them, not every record the command added."""
    if sites < COMPACT_SITES:
        return
    try:
        record_files.compact(store)
    except StoreError as error:  # the records stand; the next reader compacts
        say(f"[sites] could not bring the registry's snapshots up to date: {error}")
