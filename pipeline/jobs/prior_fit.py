"""The core prior fit as a Ray Train job (``TorchTrainer``, data-parallel), registered exactly once.

    record = fit_core_prior(PriorFitSpec(features="s3://bucket/features/", latent_dim=8, workers=4),
                            Store.open("s3://bucket/flowprior"))

No single process holds the features (see :mod:`pipeline.jobs.ingest`):

1. The driver lists the files and reads one footer (which columns, the filters in their types, the
   fingerprint); a missing path, no numeric columns or a bad filter is an error before Ray starts.
2. A validating pass of Ray tasks reads every row (columns and filters pushed down): a NaN, a wrong
   type or a mixed dimension is an error naming the file, column and row before any training; it
   returns the training rows' moments and a bounded held-out sample (``heldout_sample`` rows).
3. The driver fits the map to prior space (projection and normaliser) from the moments.
4. A ``ray.data`` dataset reads the files again and maps each block to prior space; the
   ``TorchTrainer`` splits it so each worker streams only its own shard (``prior_fit_worker``).

Checkpoints go under the store (``<store>/ray-runs/<name>``); a run restarted after a worker
failure, or rerun with the same name, resumes from the last one. The driver then builds the prior
from the EMA weights and registers it with its data fingerprint, settings, metrics and Ray run:
once per run name. Rank 0 writes each report as TensorBoard events under the run's folder and,
with MLflow tracking on (:mod:`pipeline.tracking`), to the fit's MLflow run; its progress line goes to
``<run folder>/lines``, which the driver prints as it appears (:mod:`pipeline.jobs.relayed_lines`).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.data.features import FeatureScan, column_dtypes, column_names, scan_features
from pipeline.data.schema import FeatureSchema
from pipeline.data.split import Split, require_rows
from pipeline.errors import DataError, SpecError
from pipeline.jobs import runtime, tensorboard
from pipeline.jobs.ingest import FeatureStats, gather_stats, training_dataset
from pipeline.jobs.relayed_lines import LineDrop, relayed
from pipeline.method.prior import FlowPrior, fit_info
from pipeline.method.prior_space import PriorSpace
from pipeline.method.training import FitConfig
from pipeline.method.transforms import NORMALISERS, PROJECTIONS
from pipeline.method.velocity import VelocityConfig, VelocityMLP
from pipeline.registry import Record, Registry
from pipeline.registry.retention import RAY_RUNS
from pipeline.storage import Store, validate_name
from pipeline.tracking import TAG, Tracking

LINES = "lines"  # the folder of a run's progress lines (relayed_lines), beside its checkpoints

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PriorFitSpec:
    """What to fit, on what, with how many workers. Defaults are the CPU-scaled paper settings."""

    features: str  # Parquet file, folder or glob; local or s3://
    feature_column: str = "features"
    columns: tuple[str, ...] | None = None  # numeric feature columns, instead of feature_column
    filters: dict = field(default_factory=dict)
    drop_nonfinite: bool = False
    latent_dim: int | None = None  # default: the feature dimension
    projection: str | None = None  # default: none if latent_dim == feature dim, else random
    normaliser: str = "global"
    width: int = 256  # the paper's 1024 x 6 is for GPUs
    depth: int = 4
    fit: FitConfig = FitConfig()  # batch_size is the global batch, split across workers
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int = 1
    heldout_fraction: float = 0.1  # expected share of rows held out (by row hash, see pipeline.data.split)
    heldout_sample: int = 10_000  # held-out rows the driver keeps and rank 0 evaluates on
    shuffle_buffer: int = 20_000  # rows in each worker's local shuffle buffer
    cache_mb: int = 512  # a worker keeps a shard up to this size after its first epoch (else streams every epoch)
    worker_resources: dict = field(default_factory=dict)  # extra custom resources per worker, e.g. {"trainer": 1}
    report_every: int = 250  # steps between reports, held-out evaluations and checkpoints
    eval_samples: int = 1000  # prior samples compared with held-out points at each report
    name: str | None = None  # the Ray run name; rerun with the same name to resume
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name is not None:
            validate_name(self.name, "run name")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise SpecError(f"unknown projection {self.projection!r}; choose one of {', '.join(PROJECTIONS)}")
        if self.normaliser not in NORMALISERS:
            raise SpecError(f"unknown normaliser {self.normaliser!r}; choose one of {', '.join(NORMALISERS)}")
        for name in ("width", "depth", "workers", "cpus_per_worker", "report_every", "eval_samples", "heldout_sample",
                     "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise SpecError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 0 < self.heldout_fraction < 0.5:
            raise SpecError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if self.cache_mb < 0:
            raise SpecError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.max_failures < 0:
            raise SpecError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.batch_per_worker % self.fit.t_group:
            raise SpecError(f"--t-group {self.fit.t_group} must divide each worker's batch ({self.batch_per_worker}: "
                             f"{self.fit.batch_size} over {self.workers} workers)")

    @property
    def batch_per_worker(self) -> int:
        return math.ceil(self.fit.batch_size / self.workers)

    def with_name(self) -> "PriorFitSpec":
        """This spec with a run name (a fresh unique one if none was given)."""
        if self.name:
            return self
        return replace(self, name=f"prior-fit-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedData:
    """What the driver holds before training: the statistics, and the map to prior space."""

    stats: FeatureStats
    split: Split  # which rows are held out: the statistics pass and the training stream agree on it
    space: PriorSpace
    z_heldout: np.ndarray  # (<= heldout_sample, d1) float32: the held-out sample in prior space


def scan(spec: PriorFitSpec) -> FeatureScan:
    """List the features' files and read one footer (no data): errors here come before Ray starts."""
    return scan_features(spec.features, feature_column=spec.feature_column, columns=spec.columns,
                         filters=spec.filters, drop_nonfinite=spec.drop_nonfinite)


def prepare(spec: PriorFitSpec, features: FeatureScan, say: Progress = print) -> PreparedData:
    """The validating pass over every row (Ray tasks), then the map to prior space from its moments."""
    split = Split(spec.heldout_fraction, spec.seed)
    stats = gather_stats(features, split, spec.heldout_sample, say)
    n_train, n_heldout = stats.train_rows, stats.heldout_rows
    if n_train + n_heldout == 0:
        detail = f" after filters {spec.filters}" if spec.filters else ""
        detail += f" ({stats.rows_dropped} rows dropped for NaN/inf)" if stats.rows_dropped else ""
        raise DataError(f"{spec.features}: no feature rows{detail} (the table is empty)")
    try:
        require_rows(n_train, n_heldout, spec.heldout_fraction, "fit a prior")
        space = PriorSpace.fit(stats.train, spec.latent_dim, spec.projection, spec.normaliser, spec.seed)
    except (SpecError, DataError) as error:  # name the features
        raise type(error)(f"{spec.features}: {error}") from None
    z_heldout = space.apply(torch.tensor(stats.sample)).numpy()  # (k, d1); a copy: Ray returns it read-only
    return PreparedData(stats, split, space, z_heldout)


def run_settings(spec: PriorFitSpec) -> dict:
    """What makes two fits of one run name the same run (with the data's fingerprint): every setting
    but the name itself and the run's place on the cluster."""
    return {k: v for k, v in spec.to_dict().items()
            if k not in ("name", "workers", "gpu", "cpus_per_worker", "worker_resources", "max_failures")}


def worker_resources(spec: PriorFitSpec, use_gpu: bool) -> dict[str, float]:
    """What each Ray Train worker asks for: its CPUs (= torch threads), one GPU with ``--gpu``, and any
    custom resources (a node pool's label)."""
    return {"CPU": spec.cpus_per_worker, **({"GPU": 1} if use_gpu else {}), **spec.worker_resources}


def _check_resources(spec: PriorFitSpec, embedded: bool, say: Progress) -> bool:
    """Whether to use GPUs. On the embedded local Ray (fixed resources) a request it cannot hold is
    refused and missing GPUs mean CPUs; a cluster's autoscaler may still add the nodes asked for
    (a request it never meets fails after Ray Train's start timeouts, see ``FailureConfig``)."""
    if not embedded:
        free = runtime.available("CPU") - spec.workers * spec.cpus_per_worker
        if free < 1:
            say(f"[prior fit] note: the cluster has {free + spec.workers * spec.cpus_per_worker:g} CPUs now; the "
                f"workers take {spec.workers * spec.cpus_per_worker}, and Ray Data's read tasks need at least one "
                "more (the fit waits for the autoscaler to add a node)")
        return spec.gpu
    cpus, gpus = runtime.available("CPU") - runtime.INGEST_CPUS, runtime.available("GPU")
    use_gpu = spec.gpu and gpus >= spec.workers
    if spec.gpu and not use_gpu:
        say(f"[prior fit] --gpu asked for {spec.workers} GPU worker(s) but the cluster has {gpus:g} GPU(s): using CPUs")
    if spec.workers * spec.cpus_per_worker > cpus:
        raise SpecError(f"{spec.workers} workers x {spec.cpus_per_worker} CPU need "
                         f"{spec.workers * spec.cpus_per_worker} CPUs but the cluster has {cpus:g} for training "
                         f"(and {runtime.INGEST_CPUS} for reading data); lower --workers or --cpus-per-worker")
    return use_gpu


def fit_core_prior(spec: PriorFitSpec, store: Store, address: str | None = None,
                   say: Progress = print, make_current: bool = True, tags: dict[str, str] | None = None) -> Record:
    """Fit (or resume) the run ``spec.name`` on Ray, then register its prior (with ``tags``); see the module
    docstring."""
    spec = spec.with_name()
    registry = Registry(store)
    started = time.time()
    features = scan(spec)
    done = registry.find_run("prior", spec.name, legacy=True)  # also checks the store answers, before Ray starts
    if done:  # a rerun, or a crash after the record: complete the publish (the alias move) if it was not
        registry.complete(registry.same_run(done, features.fingerprint, run_settings(spec)), make_current)
        say(f"[prior fit] run {spec.name} is already registered as {done.id}")
        return done
    tracking = Tracking.from_env()
    if tracking is None:
        return _fit(spec, store, features, address, say, make_current, tags, started, [])
    with tracking.training_run(spec.name, spec.to_dict(), {f"{TAG}kind": "prior-fit", **(tags or {})}) as run:
        say(f"[prior fit] metrics go to {run}")
        record = _fit(spec, store, features, address, say, make_current, tags, started, [run])
        run.end_tags[f"{TAG}registered"] = record.id
    return record


def _fit(spec: PriorFitSpec, store: Store, features: FeatureScan, address: str | None, say: Progress,
         make_current: bool, tags: dict[str, str] | None, started: float, sinks: list) -> Record:
    """Run the fit on Ray and register its prior; rank 0 writes each report to TensorBoard and ``sinks``."""
    registry = Registry(store)
    say(f"[prior fit] {spec.features}: {len(features.files)} Parquet files, "
        f"{sum(f.size for f in features.files) / 2**20:,.1f} MiB; checking every row")

    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.jobs.prior_fit_worker import EMA_FILE, STATE_FILE, train_loop_per_worker

    use_gpu = _check_resources(spec, runtime.connect(address), say)
    rss_before = runtime.peak_rss_mib()  # the driver with Ray and torch loaded, before any data work
    checking = time.time()
    data = prepare(spec, features, say)
    checking = time.time() - checking
    stats, space = data.stats, data.space
    say(f"[prior fit] {stats.train_rows:,} training and {stats.heldout_rows:,} held-out rows "
        f"({len(data.z_heldout):,} kept for evaluation), d={space.feature_dim} -> {space.latent_dim} ({space.kind}); "
        f"run {spec.name}")
    storage_path, storage_filesystem = runtime.storage_for(store)
    velocity = VelocityConfig(dim=space.latent_dim, width=spec.width, depth=spec.depth)
    lines = f"{RAY_RUNS}/{spec.name}/{LINES}"
    dataset = training_dataset(features, data.split, space, spec.seed)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "heldout": ray.put(data.z_heldout), "velocity": asdict(velocity), "fit": spec.fit.to_dict(),
            "batch_per_worker": spec.batch_per_worker, "seed": spec.seed,
            "shuffle_buffer": spec.shuffle_buffer, "cache_mb": spec.cache_mb, "report_every": spec.report_every,
            "eval_samples": spec.eval_samples, "threads": spec.cpus_per_worker,
            "sinks": [tensorboard.EventLog(store, f"{RAY_RUNS}/{spec.name}/{tensorboard.FOLDER}"), *sinks],
            "lines": LineDrop(store, lines)},
        datasets={"train": dataset}, dataset_config=DataConfig(datasets_to_split=["train"]),
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                     resources_per_worker=worker_resources(spec, use_gpu)),
        run_config=RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=spec.max_failures, controller_failure_limit=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2), logging_config=LoggingConfig(log_level="WARNING")),
    )
    with relayed(store, lines, say):  # the workers' progress lines, without Ray's log forwarding
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {spec.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        weights = load_file(f"{folder}/{EMA_FILE}")
        with open(f"{folder}/{STATE_FILE}") as f:
            state = json.load(f)
    model = VelocityMLP(velocity)
    model.load_state_dict(weights)
    history = state["history"]
    d2 = space.feature_dim
    schema = FeatureSchema.from_moments(column_names(features, d2), column_dtypes(features, d2),
                                        stats.train.mean, stats.train.covariance)  # the feature contract
    prior = FlowPrior(model, space, {**fit_info(space, spec.fit, history, spec.seed), "features": schema.to_dict()})
    ingest = {"files": len(features.files), "bytes": stats.bytes, "train_rows": stats.train_rows,
              "heldout_rows": stats.heldout_rows, "heldout_sample": len(data.z_heldout),
              "rows_dropped": stats.rows_dropped, "train_digest": f"{stats.train_digest:016x}",
              "columns": list(schema.columns), "shards": state.get("shards", []),
              "driver_peak_rss_mib": {"before_data": rss_before, "end": runtime.peak_rss_mib()},
              "seconds_validating": checking,
              "seconds_to_first_step": state["first_step_unix"] - started if "first_step_unix" in state else None}
    config = {**spec.to_dict(), "ray_run": {"name": spec.name, "path": f"{storage_path}/{spec.name}",
                                            "use_gpu": use_gpu}, "ingest": ingest}
    record = registry.publish_prior(prior, fingerprint=features.fingerprint, config=config,
                                    metrics={**history[-1], "train_rows": stats.train_rows,
                                             "heldout_rows": stats.heldout_rows},
                                    name=spec.name, settings=run_settings(spec), make_current=make_current,
                                    tags=tags)
    say(f"[prior fit] registered {record.id} ({store.uri_of(record.artifact)}); driver peak RSS "
        f"{rss_before:,.0f} MiB before the data, {ingest['driver_peak_rss_mib']['end']:,.0f} MiB at the end")
    return record
