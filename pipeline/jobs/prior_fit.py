"""The core prior fit as a Ray Train job (``TorchTrainer``, data-parallel), registered exactly once.

    record = fit_core_prior(PriorFitSpec(features="s3://bucket/features/", latent_dim=8, workers=4),
                            Store.open("s3://bucket/flowprior"))

No single process holds the features (see :mod:`pipeline.jobs.ingest`):

1. The driver lists the files and reads one footer (which columns, the filters in their types, the
   fingerprint); a missing path, no numeric columns or a bad filter is an error before Ray starts.
2. A validating pass of Ray tasks reads every row (columns and filters pushed down): a NaN, a wrong
   type or a mixed dimension is an error naming the file, column and row before any training step; it
   returns the training rows' moments and a bounded held-out sample (``heldout_sample`` rows). A file
   whose statistics an earlier fit kept in the store is not read again.
3. The driver fits the map to prior space (projection and normaliser) from the moments.
4. A ``ray.data`` dataset reads the files again and maps each block to prior space; the
   ``TorchTrainer`` splits it so each worker streams only its own shard (``prior_fit_worker``).

Steps 2-3 run in a second driver thread while Ray Train starts its controller and workers (seconds of
process starts and imports): the workers build their model and ask for rows, and Ray Data's read tasks
wait for the map to prior space (:mod:`pipeline.jobs.handoff`). A bad row stops them before any step, and
the driver raises the pass's error; nothing is registered (the run folder holds no checkpoint).

Checkpoints go under the store (``<store>/ray-runs/<name>``); a run restarted after a worker
failure, or rerun with the same name, resumes from the last one. The driver then builds the prior
from the EMA weights and registers it with its data fingerprint, settings, metrics and Ray run:
once per run name. Rank 0 writes each report as TensorBoard events under the run's folder and,
with MLflow tracking on (:mod:`pipeline.tracking`), to the fit's MLflow run; its progress line goes to
``<run folder>/lines``, which the driver prints as it appears (:mod:`pipeline.jobs.relayed_lines`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.data.scan import FeatureScan, column_dtypes, column_names, scan_features
from pipeline.data.schema import FeatureSchema
from pipeline.data.split import Split, require_rows
from pipeline.errors import DataError, SpecError, TrainingError
from pipeline.jobs import runtime, tensorboard
from pipeline.jobs.handoff import Handoff
from pipeline.jobs.ingest import FeatureStats, gather_stats, read_ahead, training_dataset
from pipeline.jobs.prior_fit_spec import PriorFitSpec, run_settings, worker_resources
from pipeline.jobs.relayed_lines import LineDrop, relayed
from pipeline.method.configs import VelocityConfig
from pipeline.method.prior import FlowPrior
from pipeline.method.prior_space import PriorSpace
from pipeline.progress import Say
from pipeline.registry import Record
from pipeline.sites.models import publish_prior
from pipeline.storage import Store
from pipeline.storage.layout import RAY_RUNS
from pipeline.tracking import TAG, Tracking, tracked_registry

if TYPE_CHECKING:
    from ray.train import Checkpoint

LINES = "lines"  # the folder of a run's progress lines (relayed_lines), beside its checkpoints


@dataclass
class PreparedData:
    """What the driver holds before training: the statistics, and the map to prior space."""

    stats: FeatureStats
    space: PriorSpace
    z_heldout: np.ndarray  # (<= heldout_sample, d1) float32: the held-out sample in prior space


def scan(spec: PriorFitSpec) -> FeatureScan:
    """List the features' files and read one footer (no data): errors here come before Ray starts."""
    return scan_features(spec.features, feature_column=spec.feature_column, columns=spec.columns,
                         filters=spec.filters, drop_nonfinite=spec.drop_nonfinite)


def prepare(spec: PriorFitSpec, features: FeatureScan, say: Say = print,
            validated: Store | None = None, beside_training: bool = False) -> PreparedData:
    """The validating pass over every row (Ray tasks, see :func:`gather_stats`; files whose statistics an earlier
    pass kept in ``validated`` are not read again), then the map to prior space from its moments."""
    split = Split(spec.heldout_fraction, spec.seed)
    stats = gather_stats(features, split, spec.heldout_sample, say, validated, beside_training)
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
    return PreparedData(stats, space, z_heldout)


def _check_resources(spec: PriorFitSpec, embedded: bool, say: Say) -> bool:
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
                   say: Say = print, make_current: bool = True, tags: dict[str, str] | None = None) -> Record:
    """Fit (or resume) the run ``spec.name`` on Ray, then register its prior (with ``tags``); see the module
    docstring."""
    spec = spec.with_name()
    registry = tracked_registry(store)  # a record it registers is copied to MLflow when tracking is on
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


def _fit(spec: PriorFitSpec, store: Store, features: FeatureScan, address: str | None, say: Say,
         make_current: bool, tags: dict[str, str] | None, started: float, sinks: list) -> Record:
    """Run the validating pass and the fit on Ray together, and register the prior; rank 0 writes each report to
    TensorBoard and ``sinks``."""
    say(f"[prior fit] {spec.features}: {len(features.files)} Parquet files, "
        f"{sum(f.size for f in features.files) / 2**20:,.1f} MiB; checking every row while Ray Train starts")
    embedded = runtime.connect(address)
    use_gpu = _check_resources(spec, embedded, say)
    rss_before = runtime.peak_rss_mib()  # the driver with Ray and torch loaded, before any data work
    storage_path, storage_filesystem = runtime.storage_for(store)
    timeline: dict[str, float] = {}  # + the worker's marks: when it started, when it asked for data
    checkpoint, data = _validate_and_train(spec, store, features, embedded, use_gpu, (storage_path, storage_filesystem),
                                           sinks, timeline, say)
    stats, space = data.stats, data.space
    d2 = space.feature_dim
    schema = FeatureSchema.from_moments(column_names(features, d2), column_dtypes(features, d2),
                                        stats.train.mean, stats.train.covariance)  # the feature contract
    with checkpoint.as_directory() as folder:  # the EMA weights; a run from before #32 names no network shape
        prior, state = FlowPrior.from_training(folder, space, spec.fit, spec.seed, {"features": schema.to_dict()},
                                               velocity=_velocity(spec, space.latent_dim))
    ingest = {"files": len(features.files), "bytes": stats.bytes, "train_rows": stats.train_rows,
              "heldout_rows": stats.heldout_rows, "heldout_sample": len(data.z_heldout),
              "rows_dropped": stats.rows_dropped, "files_validated_before": stats.files_validated_before,
              "train_digest": f"{stats.train_digest:016x}",
              "columns": list(schema.columns), "shards": state.get("shards", []),
              "driver_peak_rss_mib": {"before_data": rss_before, "end": runtime.peak_rss_mib()},
              "seconds_validating": timeline["validated"] - timeline["validating"],
              "seconds_to_first_step": state["first_step_unix"] - started if "first_step_unix" in state else None,
              "timeline": {k: v - started for k, v in {**timeline, **state.get("timeline_unix", {})}.items()}}
    config = {**spec.to_dict(), "ray_run": {"name": spec.name, "path": f"{storage_path}/{spec.name}",
                                            "use_gpu": use_gpu}, "ingest": ingest}
    record = publish_prior(tracked_registry(store), prior, fingerprint=features.fingerprint, config=config,
                           metrics={**state["history"][-1], "train_rows": stats.train_rows,
                                    "heldout_rows": stats.heldout_rows},
                           name=spec.name, settings=run_settings(spec), make_current=make_current, tags=tags)
    say(f"[prior fit] registered {record.id} ({store.uri_of(record.artifact)}); driver peak RSS "
        f"{rss_before:,.0f} MiB before the data, {ingest['driver_peak_rss_mib']['end']:,.0f} MiB at the end")
    return record


def _validate_and_train(spec: PriorFitSpec, store: Store, features: FeatureScan, embedded: bool, use_gpu: bool,
                        storage: tuple[str, object | None], sinks: list, timeline: dict[str, float],
                        say: Say) -> tuple[Checkpoint, PreparedData]:
    """The validating pass in a second thread (:func:`_validate`) while Ray Train starts and trains (:func:`_train`):
    the run's last checkpoint and the pass's results. If the pass fails, its error (file, column, row) is raised
    once the workers have stopped, before anything is registered."""
    handoff = Handoff.start()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="validating-pass") as pool:
            validating = pool.submit(_validate, spec, features, store, handoff, embedded, timeline, say)
            try:
                checkpoint = _train(spec, store, features, handoff, use_gpu, storage, sinks, say)
            except BaseException:
                if validating.done():
                    validating.result()  # a bad row stopped the workers: raise the pass's own error
                raise
            return checkpoint, validating.result()
    finally:
        handoff.close()


def _velocity(spec: PriorFitSpec, latent_dim: int) -> VelocityConfig:
    """The velocity network a fit of ``spec`` trains in a prior space of ``latent_dim`` dimensions."""
    return VelocityConfig(dim=latent_dim, width=spec.width, depth=spec.depth)


def _validate(spec: PriorFitSpec, features: FeatureScan, store: Store, handoff: Handoff, embedded: bool,
              timeline: dict[str, float], say: Say) -> PreparedData:
    """The validating pass (:func:`prepare`, in the driver's second thread while Ray Train starts), handed to the
    workers and their read tasks (:mod:`pipeline.jobs.handoff`): the map to prior space and the held-out sample,
    or the failure that stops them."""
    timeline["validating"] = time.time()
    try:
        data = prepare(spec, features, say, validated=store, beside_training=embedded)
    except BaseException as error:
        handoff.fail(f"{type(error).__name__}: {error}")
        raise
    timeline["validated"] = time.time()
    handoff.put(space=data.space.arrays(), heldout=data.z_heldout, velocity=_velocity(spec, data.space.latent_dim))
    say(f"[prior fit] {data.stats.train_rows:,} training and {data.stats.heldout_rows:,} held-out rows "
        f"({len(data.z_heldout):,} kept for evaluation), d={data.space.feature_dim} -> {data.space.latent_dim} "
        f"({data.space.kind}); run {spec.name}")
    return data


def _train(spec: PriorFitSpec, store: Store, features: FeatureScan, handoff: Handoff, use_gpu: bool,
           storage: tuple[str, object | None], sinks: list, say: Say) -> Checkpoint:
    """The Ray Train run ``spec.name`` under ``storage`` (``runtime.storage_for``), resumed from its last
    checkpoint if it has one; returns its last checkpoint (a ``ray.train.Checkpoint``). Its workers and read
    tasks take the map to prior space and the held-out sample from ``handoff`` when the validating pass is done."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.jobs.prior_fit_worker import WorkerConfig, train_loop_per_worker

    lines = f"{RAY_RUNS}/{spec.name}/{LINES}"
    latent_dim = spec.latent_dim or features.dim  # the network's size, if known before the pass
    worker = WorkerConfig(
        velocity=_velocity(spec, latent_dim) if latent_dim else None, fit=spec.fit,
        batch_per_worker=spec.batch_per_worker, seed=spec.seed,
        shuffle_buffer=spec.shuffle_buffer, cache_mb=spec.cache_mb, report_every=spec.report_every,
        eval_samples=spec.eval_samples, threads=spec.cpus_per_worker, handoff=handoff,
        sinks=(tensorboard.EventLog(store, f"{RAY_RUNS}/{spec.name}/{tensorboard.FOLDER}"), *sinks),
        lines=LineDrop(store, lines))
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"worker": worker},  # a dict, as Ray Train requires
        datasets={"train": training_dataset(features, Split(spec.heldout_fraction, spec.seed), handoff, spec.seed)},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=read_ahead(spec.read_ahead_mb)),
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                     resources_per_worker=worker_resources(spec, use_gpu)),
        run_config=RunConfig(
            name=spec.name, storage_path=storage[0], storage_filesystem=storage[1],
            failure_config=FailureConfig(max_failures=spec.max_failures, controller_failure_limit=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2), logging_config=LoggingConfig(log_level="WARNING")),
    )
    with relayed(store, lines, say):  # the workers' progress lines, without Ray's log forwarding
        result = trainer.fit()
    if result.checkpoint is None:
        raise TrainingError(f"run {spec.name} finished without a checkpoint")
    return result.checkpoint
