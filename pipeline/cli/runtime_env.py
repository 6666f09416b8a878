"""``flowprior runtime-env``: the Ray runtime_env that runs flowprior's jobs on a stock Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.jobs.runtime_env import EXTRAS

DESCRIPTION = """\
Print (or write with --out) the Ray runtime_env that runs flowprior on a cluster
that has only Ray and torch: this installed flowprior package as a py_module
(uploaded by `ray job submit`) and its other requirements for pip, which each
node installs once into a virtualenv that keeps the node's own Ray and torch.

  flowprior runtime-env --out runtime_env.yaml
  ray job submit --address http://HEAD:8265 --runtime-env runtime_env.yaml \\
      --entrypoint-num-cpus 1 --entrypoint-memory 4000000000 -- \\
      python -m pipeline prior fit --features s3://BUCKET/features/ --store s3://BUCKET/flowprior

Nodes need a package index for pip (PyPI by default; --index-url for a mirror),
or a wheelhouse every node can read (--no-index --find-links DIR). Jobs that log
to MLflow (--mlflow URI) need --extra mlflow.

The runtime_env is part of the job's metadata, which Ray shows to whoever reaches
the head: URLs with credentials (https://user:token@...) are refused. Give the
nodes' pip its credentials in its own configuration (pip.conf or PIP_INDEX_URL
on the image, or a ~/.netrc entry for the index's host)."""


def cmd_runtime_env(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.jobs.runtime_env import runtime_env

    options = [*(["--no-index"] if args.no_index else []),
               *([f"--index-url={args.index_url}"] if args.index_url else []),
               *[f"--find-links={link}" for link in args.find_links or []]]
    text = yaml.safe_dump(runtime_env(options, tuple(args.extras)), sort_keys=False)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("runtime-env", help="the Ray runtime_env for `ray job submit` to a stock Ray cluster",
                                 description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the YAML here (default: stdout)")
    parser.add_argument("--index-url", metavar="URL",
                        help="package index the nodes' pip uses (default: PyPI); no credentials in the URL")
    parser.add_argument("--find-links", action="append", metavar="DIR|URL",
                        help="a wheelhouse the nodes' pip reads (repeatable)")
    parser.add_argument("--no-index", action="store_true", help="nodes use only --find-links, no index")
    parser.add_argument("--extra", dest="extras", action="append", choices=EXTRAS, default=[],
                        help="also install this optional extra on the nodes (mlflow: for jobs run with --mlflow URI)")
    parser.set_defaults(handler=cmd_runtime_env)
