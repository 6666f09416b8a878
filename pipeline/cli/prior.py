"""``flowprior prior fit``: fit the shared core prior as a Ray Train job and register it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from pipeline.cli.common import add_precision_argument, add_record_arguments, add_store_arguments, open_store, positive
from pipeline.formatting import number
from pipeline.jobs.prior_fit_spec import PriorFitSpec
from pipeline.method.configs import NORMALISERS, PROJECTIONS, FitConfig

if TYPE_CHECKING:
    from pipeline.registry import Record
    from pipeline.storage import Store

SPEC = {f.name: f.default for f in dataclasses.fields(PriorFitSpec)}  # each flag's default is the spec's
FIT = FitConfig()  # and the optimiser flags' are its fit's


def _filter(text: str) -> tuple[str, str]:
    column, sep, value = text.partition("=")
    if not sep or not column:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
    return column, value


def _resource(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if not sep or not name or value <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT with AMOUNT > 0, got {text!r}")
    return name, value


def cmd_fit(args: argparse.Namespace) -> int:
    from pipeline.jobs.prior_fit import fit_core_prior

    fit = FitConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                    precision=args.precision, t_group=args.t_group)
    filters: dict[str, list[str]] = {}
    for column, value in args.filter or []:
        filters.setdefault(column, []).append(value)
    spec = PriorFitSpec(
        features=args.features, feature_column=args.feature_column, filters=filters,
        columns=tuple(args.columns.split(",")) if args.columns else None,
        drop_nonfinite=args.drop_nonfinite, latent_dim=args.latent_dim, projection=args.projection,
        normaliser=args.normaliser,
        width=args.width, depth=args.depth, fit=fit, workers=args.workers, gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker, worker_resources=dict(args.worker_resource or []),
        heldout_fraction=args.heldout_fraction, heldout_sample=args.heldout_sample,
        shuffle_buffer=args.shuffle_buffer, cache_mb=args.cache_mb, read_ahead_mb=args.read_ahead_mb,
        report_every=args.report_every, name=args.name,
        max_failures=args.max_failures, seed=args.seed)
    store = open_store(args)
    record = fit_core_prior(spec, store, address=args.address, tags=dict(args.tags))
    print(fitted(record, store))
    return 0


def fitted(record: Record, store: Store) -> str:
    """The line ``prior fit`` ends with: the record, its run, its held-out numbers (``n/a`` where the record
    holds none: a NaN is stored as null) and where its artifact is."""
    return (f"prior {record.id}  run {record.name}  held-out FM {number(record.metrics.get('heldout_fm'), '.4f')}  "
            f"sliced W2 {number(record.metrics.get('sliced_w2'), '.4f')}  artifact {store.uri_of(record.artifact)}")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("prior", help="fit the shared core prior (Ray Train)",
                                 description="Core prior commands.")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="ACTION")
    fit = sub.add_parser(
        "fit", help="fit a core prior on target features with Ray Train and register it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Fit a rectified-flow prior on target features (Parquet) as a Ray Train job.\n\n"
            "No single process holds the features: Ray tasks check every row and gather the\n"
            "statistics of the map to prior space, then Ray Data streams each worker its own\n"
            "shard (only the feature columns, filters pushed into the reader).\n\n"
            "Data-parallel workers, checkpoints under <store>/ray-runs/<name>, restarts from the\n"
            "last checkpoint after a worker failure; a rerun with the same --name resumes. The\n"
            "prior (EMA weights) is registered once, as the fleet's current core prior.\n\n"
            "Without --address or $RAY_ADDRESS a local Ray starts; under `ray job submit`\n"
            "the job joins the cluster."))
    _data_arguments(fit)
    _model_arguments(fit)
    _worker_arguments(fit)
    _run_arguments(fit)
    add_record_arguments(fit)
    add_store_arguments(fit)
    fit.set_defaults(handler=cmd_fit)


def _data_arguments(fit: argparse.ArgumentParser) -> None:
    """Which rows and columns, and how they map to prior space."""
    fit.add_argument("--features", required=True, metavar="URI",
                     help="Parquet file, folder or glob (local, file:// or s3://)")
    fit.add_argument("--feature-column", default=SPEC["feature_column"],
                     help="fixed-size-list column of features; if absent, every numeric column except id/site/time")
    fit.add_argument("--columns", metavar="A,B,...",
                     help="numeric feature columns to use (instead of --feature-column)")
    fit.add_argument("--filter", action="append", type=_filter, metavar="COLUMN=VALUE",
                     help="keep rows whose COLUMN equals VALUE (repeat for several values or columns)")
    fit.add_argument("--drop-nonfinite", action="store_true", help="drop rows with NaN/inf (and count them) "
                     "instead of refusing the data")
    fit.add_argument("--latent-dim", type=positive, help="prior dimension (default: the feature dimension)")
    fit.add_argument("--projection", choices=PROJECTIONS,
                     help="features -> prior space (default: none if dims match, else random)")
    fit.add_argument("--normaliser", choices=NORMALISERS, default=SPEC["normaliser"],
                     help="scale of prior space: one scale for all dims, or one per dim (default: %(default)s)")


def _model_arguments(fit: argparse.ArgumentParser) -> None:
    """The velocity network and its optimiser (the rest of ``FitConfig`` keeps its defaults)."""
    fit.add_argument("--width", type=positive, default=SPEC["width"],
                     help="velocity MLP width (default: %(default)s; paper 1024)")
    fit.add_argument("--depth", type=positive, default=SPEC["depth"],
                     help="AdaLN blocks (default: %(default)s; paper 6)")
    fit.add_argument("--steps", type=positive, default=FIT.steps, help="optimisation steps (default: %(default)s)")
    fit.add_argument("--batch-size", type=positive, default=FIT.batch_size,
                     help="global batch, split across workers (default: %(default)s)")
    fit.add_argument("--lr", type=float, default=FIT.lr, help="peak learning rate (default: %(default)g)")
    fit.add_argument("--warmup", type=int, default=FIT.warmup, help="warm-up steps (default: %(default)s)")


def _worker_arguments(fit: argparse.ArgumentParser) -> None:
    """The data-parallel workers: how many, what each takes, and how each computes a step."""
    fit.add_argument("--workers", type=positive, default=SPEC["workers"],
                     help="data-parallel workers (default: %(default)s)")
    fit.add_argument("--cpus-per-worker", type=positive, default=SPEC["cpus_per_worker"],
                     help="CPUs (and torch threads) per worker")
    fit.add_argument("--gpu", action="store_true", help="one GPU per worker when the cluster has them (else CPU)")
    add_precision_argument(fit)
    fit.add_argument("--t-group", type=positive, default=FIT.t_group, metavar="K",
                     help="K samples share one stratified time t: the time conditioning costs 1/K "
                          "(see benchmarks/stratified_t.py; default %(default)s, one t per sample)")
    fit.add_argument("--worker-resource", action="append", type=_resource, metavar="NAME=AMOUNT",
                     help="a custom Ray resource each worker needs, e.g. a node pool's label (repeatable)")


def _run_arguments(fit: argparse.ArgumentParser) -> None:
    """The held-out rows, each worker's stream, the reports, and the Ray run's name, restarts and cluster."""
    fit.add_argument("--heldout-fraction", type=float, default=SPEC["heldout_fraction"],
                     help="expected share of rows held out for evaluation, chosen by a hash of each row's values "
                          "(default: %(default)s)")
    fit.add_argument("--heldout-sample", type=positive, default=SPEC["heldout_sample"],
                     help="held-out rows kept for evaluation (the driver's only rows; default: %(default)s)")
    fit.add_argument("--shuffle-buffer", type=positive, default=SPEC["shuffle_buffer"],
                     help="rows in each worker's local shuffle buffer (default: %(default)s)")
    fit.add_argument("--read-ahead-mb", type=positive, default=SPEC["read_ahead_mb"],
                     help="object store for training rows read ahead of the step (Ray Data's budget; default: "
                          "%(default)s): more buffers longer stalls, less leaves the CPUs to the step")
    fit.add_argument("--cache-mb", type=int, default=SPEC["cache_mb"],
                     help="a worker keeps a shard up to this size after its first epoch instead of streaming "
                          "every epoch; 0 streams always (default: %(default)s)")
    fit.add_argument("--report-every", type=positive, default=SPEC["report_every"],
                     help="steps between progress reports, held-out evaluations and checkpoints")
    fit.add_argument("--name", help="Ray run name; rerun with the same name to resume (default: a fresh one)")
    fit.add_argument("--max-failures", type=int, default=SPEC["max_failures"],
                     help="worker-group restarts from the last checkpoint")
    fit.add_argument("--seed", type=int, default=SPEC["seed"])
    fit.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
