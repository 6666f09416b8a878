"""The ``flowprior`` command line (also ``python -m pipeline``).

One module per command group; each adds its parser and handler. Errors a user can fix (the
:mod:`pipeline.errors` family) print ``flowprior <command>: error: ...`` and exit 2; an unreachable
store, Ray cluster or MLflow server exits 1; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.cli import demo, fleet, prior, registry, runtime_env, site, sweep, toy
from pipeline.errors import FlowpriorError

# The command's process settings, made once at its start (the library never changes the environment): Tune
# prints no tables (with verbose=0 a sweep's own progress lines are the output) and no warning about the
# frequent experiment snapshots a resumable sweep needs. An explicit value in the environment wins.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowprior",
        description="Flow priors for aligning latent spaces across sites. Every command that reads or writes "
                    "the store takes --store URI (default: $FLOWPRIOR_STORE, else ./flowprior-store).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    toy.add_parser(commands)
    demo.add_parser(commands)
    prior.add_parser(commands)
    site.add_parser(commands)
    sweep.add_parser(commands)
    registry.add_parser(commands)
    fleet.add_parser(commands)
    runtime_env.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline import tracking

    args = build_parser().parse_args(argv)
    for name, value in TUNE_ENV.items():
        os.environ.setdefault(name, value)
    try:
        if hasattr(args, "mlflow") and (on := tracking.use(args.mlflow)):
            print(f"[mlflow] runs and records are copied to {on}", file=sys.stderr)
        return args.handler(args)
    except FlowpriorError as error:  # anything else is a bug and keeps its traceback
        print(f"flowprior {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
