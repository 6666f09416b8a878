"""``flowprior sweep tuning/NAME.yaml``: a Ray Tune sweep across the spec's sites, recorded in the registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.common import add_record_arguments, add_store_arguments, open_store
from pipeline.formatting import number


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.sweeps import load_sweep_spec

    spec = load_sweep_spec(args.spec)  # the sweep spec and every site spec it names are checked first
    from pipeline.jobs.sweep import SweepInterrupted, run_sweep

    quiet = (lambda _: None) if args.json else print
    try:
        result = run_sweep(spec, open_store(args), address=args.address, say=quiet, name=args.name,
                           trust_store_state=args.trust_store_state, tags=dict(args.tags))
    except SweepInterrupted as error:
        print(f"flowprior sweep: {error}", file=sys.stderr)
        return 130
    record = result.record
    if args.report:
        from pipeline.sweeps.report import write_sweep_report

        quiet(f"[sweep {spec.name}] report: {write_sweep_report(Path(args.report), record)}")
    if args.json:
        print(json.dumps({"sweep": record.id, "name": record.name, "metrics": result.metrics,
                          "choices": result.choices}, indent=1))
        return 0
    print(result.summary())
    print("\n".join(choice_lines(result.choices)))
    print(f"sweep {record.id}: align with `flowprior site align SITE.yaml --from-sweep {record.id}`")
    return 0


CHOICE_COLUMNS = (("lam", "lambda", 7, "g"), ("lr", "lr", 7, "g"), ("draws", "draws", 5, "g"),
                  ("recon", "recon", 8, ".4f"), ("baseline_recon", "recon@0", 8, ".4f"),
                  ("knn_nll", "knn_nll", 8, ".3f"), ("baseline_knn_nll", "nll@0", 8, ".3f"),
                  ("objective", "objective", 9, ".3f"))  # (key in a choice, column title, width, format)


def choice_lines(choices: dict[str, dict]) -> list[str]:
    """The table of the setting chosen per site, a header first; a number the record holds as null (a NaN) or
    lacks (an older sweep's) reads ``n/a``."""
    header = [f"{'site':10s} {'mode':5s}"] + [f"{title:>{width}s}" for _, title, width, _ in CHOICE_COLUMNS]
    lines = [" ".join(header) + "  bound"]
    for site, c in choices.items():
        numbers = [number(c.get(key), f"{width}{spec}") for key, _, width, spec in CHOICE_COLUMNS]
        lines.append(f"{site:10s} {str(c.get('mode', 'align')):5s} {' '.join(numbers)}  "
                     f"{'within' if c.get('feasible') else 'exceeded'}")
    return lines


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep", help="sweep lambda (and lr, draws K) per site with Ray Tune and record the choice",
        description="Run the Ray Tune experiment a sweep spec (tuning/NAME.yaml) describes, across all its sites at "
                    "once: a lambda = 0 baseline per site, then one trial per site and setting, each training the "
                    "site's encoder against its prior and reporting every epoch; early stopping (per site: the "
                    "spec's scheduler, forecast or ASHA) stops trials that cannot win. Records a sweep with every "
                    "trial and the chosen setting per site (lowest alignment score within the reconstruction "
                    "bound). Experiments live under the store; rerunning the same command resumes an interrupted "
                    "sweep (with --trust-store-state; exit status 130 on Ctrl+C) or prints the recorded one.")
    parser.add_argument("spec", metavar="SWEEP.yaml", help="sweep spec (see tuning/lambda.yaml)")
    parser.add_argument("--name", help="Tune experiment name (default: the spec's name + a digest of the settings, "
                                       "the sites' priors and data, so that a rerun resumes)")
    parser.add_argument("--report", metavar="DIR", help="also write DIR/sweep.html with the Pareto plot per site")
    parser.add_argument("--json", action="store_true", help="print the choices and metrics as JSON")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--trust-store-state", action="store_true",
                        help="resume an unfinished Tune experiment found under <store>/ray-runs/. Tune keeps its "
                             "state as pickles, so resuming runs code from the store on this driver: pass this only if "
                             "no one but trusted jobs can write there (without it, finding such state is an error)")
    add_record_arguments(parser)
    add_store_arguments(parser)
    parser.set_defaults(handler=cmd_sweep)
