"""The ``flowprior`` command line (also ``python -m pipeline``).

One module per command group; each adds its parser and handler. Errors a user can fix (the
:mod:`pipeline.errors` family) print ``flowprior <command>: error: ...`` and exit 2; an unreachable
store, Ray cluster or MLflow server exits 1; any other exception is a bug and shows its traceback.
Output piped into a reader that stops early (``flowprior registry ls | head``) ends the command
quietly with exit status 141 (128 + SIGPIPE), as the shell reports a command SIGPIPE stopped.
The store options may also come before the command (``flowprior --store X registry ls``); given
after it as well, the command's own win.
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from pipeline.cli import demo, federated, fleet, prior, registry, runtime_env, site, sweep, toy
from pipeline.cli.common import add_store_arguments, apply_global_store
from pipeline.errors import FlowpriorError

# The command's process settings, made once at its start (the library never changes the environment): Tune
# prints no tables (with verbose=0 a sweep's own progress lines are the output) and no warning about the
# frequent experiment snapshots a resumable sweep needs. An explicit value in the environment wins.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
PIPE_CLOSED = 141  # the exit status when stdout's reader went away: 128 + SIGPIPE, as for a command SIGPIPE stops


def version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("flowprior")
    except PackageNotFoundError:
        import pipeline

        return getattr(pipeline, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowprior",
        description="Flow priors for aligning latent spaces across sites. Every command that reads or writes "
                    "the store takes --store URI (default: $FLOWPRIOR_STORE, else ./flowprior-store), before the "
                    "command or after it (after it wins).",
    )
    parser.add_argument("--version", action="version", version=f"flowprior {version()}")
    add_store_arguments(parser, prefix="global_")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    toy.add_parser(commands)
    demo.add_parser(commands)
    prior.add_parser(commands)
    site.add_parser(commands)
    sweep.add_parser(commands)
    registry.add_parser(commands)
    fleet.add_parser(commands)
    federated.add_parser(commands)
    runtime_env.add_parser(commands)
    return parser


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end), so that a
    ``BrokenPipeError`` from elsewhere (a socket) is not taken for it. True where this cannot be asked."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def main(argv: list[str] | None = None) -> int:
    from pipeline import tracking

    parser = build_parser()
    args = parser.parse_args(argv)
    if given := apply_global_store(args):
        parser.error(f"{given}: the {args.command} command takes no such option")
    for name, value in TUNE_ENV.items():
        os.environ.setdefault(name, value)
    if not sys.stdout.isatty():  # Ray's forwarded lines (--verbose) without colour codes in a file or a pipe
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        if hasattr(args, "mlflow") and (on := tracking.use(args.mlflow)):
            print(f"[mlflow] runs and records are copied to {on}", file=sys.stderr)
        code = args.handler(args)
        sys.stdout.flush()  # here, not at exit, so that a reader gone is noticed below
        return code
    except FlowpriorError as error:  # anything else is a bug and keeps its traceback
        print(f"flowprior {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        # the reader (``| head``) has what it wanted: no traceback, and what is still buffered goes nowhere
        # (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is no file (replaced in-process): nothing flushes it at exit
        return PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
