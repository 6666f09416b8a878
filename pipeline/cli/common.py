"""Arguments shared by the commands: ``--store`` with its S3 overrides, and argument types."""

from __future__ import annotations

import argparse

from pipeline.errors import RegistryError, SpecError
from pipeline.storage import S3Options, Store

STORE_OPTIONS = ("store", "s3_endpoint", "s3_profile", "s3_timeout")  # also accepted before the command


def add_store_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--store`` and its S3 overrides; ``prefix`` names their destinations (``global_`` for the copies the
    top-level parser takes before the command, which :func:`apply_global_store` hands to the command)."""
    group = parser.add_argument_group("store")
    group.add_argument("--store", dest=f"{prefix}store", metavar="URI", default=None,
                       help="local path, file:///path or s3://bucket/prefix (default: $FLOWPRIOR_STORE, "
                            "else ./flowprior-store). S3 credentials come from the AWS environment "
                            "variables or profiles, never from the URI.")
    group.add_argument("--s3-endpoint", dest=f"{prefix}s3_endpoint", metavar="URL", default=None,
                       help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS)")
    group.add_argument("--s3-profile", dest=f"{prefix}s3_profile", metavar="NAME", default=None,
                       help="AWS profile for S3 credentials")
    group.add_argument("--s3-timeout", dest=f"{prefix}s3_timeout", metavar="SECONDS", type=float, default=None,
                       help="S3 connect timeout; reads get 10x (default: 2 s, or $FLOWPRIOR_S3_CONNECT_TIMEOUT)")


def apply_global_store(args: argparse.Namespace) -> str | None:
    """Give the command the store options written before it (``flowprior --store X registry ls``) where it was
    not given its own after it (those win). Returns the option a command without it was given, else None."""
    for name in STORE_OPTIONS:
        value = getattr(args, f"global_{name}")
        if value is None:
            continue
        if not hasattr(args, name):
            return f"--{name.replace('_', '-')}"
        if getattr(args, name) is None:
            setattr(args, name, value)
    return None


def open_store(args: argparse.Namespace) -> Store:
    timeout = args.s3_timeout
    options = S3Options.from_env(endpoint_url=args.s3_endpoint, profile=args.s3_profile, connect_timeout=timeout,
                                 read_timeout=None if timeout is None else 10 * timeout)
    return Store.open(args.store, options)


def open_existing_store(args: argparse.Namespace) -> Store:
    """The store of ``--store`` for a command that only reads it, refusing a local one that does not exist (a
    mistyped path): every such command answers a missing store the same way, exit 2. Commands that write (``prior
    fit``, ``demo``, the site steps) call :func:`open_store`, which creates the store with its first write."""
    store = open_store(args)
    if store.is_local and not store.backend.root.is_dir():
        raise SpecError(f"no flowprior store at {store.uri} (nothing has been published there; check --store or "
                        "$FLOWPRIOR_STORE, or create one with `flowprior prior fit` or `flowprior demo`)")
    return store


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tag`` and ``--mlflow``: how what a command registers is labelled and where it is copied."""
    parser.add_argument("--tag", dest="tags", action="append", type=tag, default=[], metavar="KEY=VALUE",
                        help="tag what this registers (repeatable; find it with `flowprior registry ls --where "
                             "KEY=VALUE`)")
    add_mlflow_argument(parser)


def add_mlflow_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow", metavar="URI",
                        help="also log runs and registered records to this MLflow tracking server (default: "
                             "$MLFLOW_TRACKING_URI; off when neither is set; experiment $MLFLOW_EXPERIMENT_NAME, "
                             "else flowprior). Needs pip install 'flowprior[mlflow]'")


def tag(text: str) -> tuple[str, str]:
    from pipeline.registry.records import parse_tag

    try:
        return parse_tag(text)
    except RegistryError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def gpu_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share of one GPU in (0, 1], got {text!r}")
    return value


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    from pipeline.method.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                        help="flow-matching forward/backward in float32, or bf16 autocast (GPUs with bf16; "
                             "weights, optimiser state and every metric stay float32; default: %(default)s)")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns under ``header``, for people (``--json`` is for scripts)."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)
