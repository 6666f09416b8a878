"""``flowprior site validate|check|finetune|align|run SITE.yaml...``: the per-site steps, one spec per site."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.common import add_precision_argument, add_record_arguments, add_store_arguments, gpu_share, open_store
from pipeline.errors import SpecError
from pipeline.formatting import number, size
from pipeline.jobs.sites import SITE_RETRIES, UNTIL
from pipeline.method.configs import FINETUNE_METHODS
from pipeline.sites.spec import SITE_PRIOR_MODES, FinetuneSettings


def _specs(args: argparse.Namespace) -> list:
    from pipeline.sites import load_site_spec

    specs = [load_site_spec(path) for path in args.specs]  # every spec is checked before any work starts
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.site in seen:
            raise SpecError(f"{spec.path} and {seen[spec.site]} both describe site {spec.site!r}")
        seen[spec.site] = spec.path
    return specs


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.cli.common import open_existing_store
    from pipeline.registry import Registry
    from pipeline.sites import load_site_spec
    from pipeline.sites.validate import SiteValidation, validate_site

    registry, reports = Registry(open_existing_store(args)), []
    for path in args.specs:
        try:
            spec = load_site_spec(path)
        except SpecError as error:
            reports.append(SiteValidation("?", path, problems=[str(error)]))
            continue
        reports.append(validate_site(spec, registry, args.prior))
    sites: dict[str, str] = {}
    for report in reports:
        if report.site in sites and report.site != "?":
            report.problems.append(f"{sites[report.site]} describes site {report.site!r} too")
        sites.setdefault(report.site, report.path)
    if args.json:
        print(json.dumps([vars(r) | {"ok": r.ok} for r in reports], indent=1))
    for report in reports if not args.json else ():
        print(f"{report.site} ({report.path}): {'ok' if report.ok else 'PROBLEMS'}")
        for label, lines in (("problem", report.problems), ("warning", report.warnings)):
            for line in lines:
                print(f"  {label}: {line}")
        for done in report.done:
            print(f"  already ran ({done['record']}): {done['what']}")
        for label, lines in (("skipped", report.skipped), ("would run", report.plan)):
            for line in lines:
                print(f"  {label}: {line}")
    return 0 if all(r.ok for r in reports) else 1


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import run_sites
    from pipeline.sites.check import check_site

    specs = _specs(args)
    checks = run_sites(check_site, specs, open_store(args), address=args.address, retries=args.retries,
                       say=print if not args.json else lambda _: None, verbose=args.verbose, prior_id=args.prior,
                       force=args.force, tags=dict(args.tags))
    if args.json:
        print(json.dumps([{"site": c.site, "decision": c.config["decision"], "check": c.id, "prior": c.parents[0],
                           **c.metrics} for c in checks], indent=1))
        return 0
    print(check_table(checks))
    return 0


def check_table(checks: list) -> str:
    """The ``site check`` table of site-check records; a number a record lacks (or holds as null) reads n/a."""
    lines = [f"{'site':10s} {'decision':9s} {'probe':>6s} {'fm_ratio':>8s} {'nll_gap':>8s} {'mmd':>8s}  check"]
    for c in checks:
        m = c.metrics
        lines.append(f"{c.site:10s} {c.config['decision']:9s} {number(m.get('probe_gain'), '6.1%')} "
                     f"{number(m.get('fm_ratio'), '8.3f')} {number(m.get('nll_gap'), '+8.3f')} "
                     f"{number(m.get('mmd'), '8.4f')}  {c.id}")
    return "\n".join(lines)


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import run_sites
    from pipeline.registry.records import prior_method
    from pipeline.sites.finetune import finetune_site

    specs = _specs(args)
    records = run_sites(finetune_site, specs, open_store(args), address=args.address, gpu=args.gpu,
                        retries=args.retries, verbose=args.verbose, mode=args.mode, prior_id=args.prior,
                        precision=args.precision, method=args.method, force=args.force, tags=dict(args.tags))
    for spec, record in zip(specs, records, strict=True):
        if record is None:
            print(f"{spec.site:10s} reuse    (nothing to train)")
        else:
            print(f"{spec.site:10s} {record.config['mode']:8s} {prior_method(record):7s} "
                  f"{record.id}  held-out FM {number(record.metrics.get('heldout_fm_core'), '.4f')} (core) -> "
                  f"{number(record.metrics.get('heldout_fm'), '.4f')}, {size(record.config.get('artifact_bytes'))}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import run_sites
    from pipeline.sites.align import align_site

    specs = _specs(args)
    results = run_sites(align_site, specs, open_store(args), address=args.address, gpu=args.gpu,
                        retries=args.retries, verbose=args.verbose, lam=args.lam, prior_id=args.prior,
                        sweep_id=args.from_sweep, force=args.force, tags=dict(args.tags))
    print(f"{'site':10s} {'lambda':>6s} {'recon':>8s} {'recon@0':>8s} {'knn_nll':>8s} {'nll@0':>8s} {'spread':>6s}  "
          "encoder -> prior")
    for r in results:
        m = r.record.metrics
        print(f"{r.record.site:10s} {r.record.config['lambda']:6g} {number(m.get('recon'), '8.4f')} "
              f"{number(m.get('baseline_recon'), '8.4f')} {number(m.get('knn_nll'), '8.3f')} "
              f"{number(m.get('baseline_knn_nll'), '8.3f')} {number(m.get('spread'), '6.2f')}  "
              f"{r.record.id} -> {r.record.aligned_to}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.cli.common import table
    from pipeline.jobs.sites import run_site_paths

    specs = _specs(args)
    paths = run_site_paths(specs, open_store(args), until=args.until, address=args.address, gpu=args.gpu,
                           retries=args.retries, verbose=args.verbose, prior_id=args.prior, force=args.force,
                           tags=dict(args.tags), say=print if not args.json else lambda _: None)
    failed = [p for p in paths if p.failed]
    if args.json:
        print(json.dumps([{"site": p.site, "decision": p.decision, "check": p.check.id if p.check else None,
                           "site_prior": p.site_prior.id if p.site_prior else None, "prior": p.prior,
                           "encoder": p.encoder.id if p.encoder else None, "failed": p.failed} for p in paths],
                         indent=1))
    else:
        print(table(("site", "decision", "prior", "encoder", "status"),
                    [(p.site, p.decision or "-", p.prior or "-", p.encoder.id if p.encoder else "-",
                      f"failed at {p.failed}" if p.failed else "ok") for p in paths]))
    if failed:
        print(f"flowprior site run: {len(failed)} of {len(paths)} site(s) failed: "
              f"{', '.join(p.site for p in failed)}", file=sys.stderr)
        return 1
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("site", help="per-site check, fine-tune/refit and encoder alignment",
                                 description="Per-site commands. Each takes one or more site specs "
                                             "(sites/<site>.yaml); several sites run in parallel on Ray.")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="ACTION")
    validate = _add_validate(sub)
    _common_arguments(validate, runs=False, trains=False)
    for add, trains in ((_add_check, False), (_add_finetune, True), (_add_align, True), (_add_run, True)):
        _common_arguments(add(sub), runs=True, trains=trains)


def _add_validate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    validate = sub.add_parser(
        "validate", help="check site specs, their data's schema and the feature contract; write nothing",
        description="For each site spec: parse it, read only the Parquet footers of its target and observations "
                    "(and, where it filters rows, the filter columns, to count the rows that pass), hold the "
                    "target's columns to the prior's feature contract (names and order) and encoder.latent_dim, "
                    "if set, to the dimension of the prior the encoder would align to, and print what check, "
                    "finetune and align would do, or the record of each step that already ran. Writes nothing; exit "
                    "status 1 if any spec has a problem (2 if the store does not exist). Every spec key and its "
                    "default: docs/spec-reference.md.")
    validate.add_argument("--json", action="store_true", help="print the reports as JSON")
    validate.set_defaults(handler=cmd_validate)
    return validate


def _add_check(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    check = sub.add_parser(
        "check", help="decide reuse / finetune / refit for sites against the core prior",
        description="Measure how well the core prior (or --prior) explains each site's held-out target features "
                    "-- held-out FM loss and kNN NLL proxy relative to the core's own held-out data, MMD of prior "
                    "samples vs the site -- decide reuse, finetune or refit with the spec's thresholds, print the "
                    "numbers and record a site-check in the registry. One Ray task per site (1 CPU each).")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.set_defaults(handler=cmd_check)
    return check


def _add_finetune(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    finetune = sub.add_parser(
        "finetune", help="fine-tune (or refit) site priors from the core prior, in parallel on Ray",
        description="Train a site prior per site as a Ray task: from the core prior's weights (finetune) or from "
                    "scratch in its space (refit), and register it as a site-prior whose parent is the core "
                    "prior. --mode auto (default) follows the site's latest check (checking first if needed) "
                    "and skips sites whose decision is reuse.")
    finetune.add_argument("--mode", choices=("auto", *SITE_PRIOR_MODES), default="auto")
    finetune.add_argument("--method", choices=FINETUNE_METHODS, default=None,
                          help="how a fine-tune trains (default: each spec's finetune.method, itself by default "
                               f"{FinetuneSettings.method}): adapter trains a small adapter of the frozen core and "
                               "stores only it; full trains and stores every weight. A refit is always whole")
    add_precision_argument(finetune)
    finetune.set_defaults(handler=cmd_finetune)
    return finetune


def _add_align(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    align = sub.add_parser(
        "align", help="train each site's encoder aligned to its prior, with a lambda = 0 baseline",
        description="Train each site's autoencoder on its observations with reconstruction + lambda * L_align "
                    "against the site's prior (its site prior from the current core prior, or the core prior "
                    "when its decision was reuse), and a lambda = 0 baseline in the same run. Registers an "
                    "encoder aligned_to that prior, with reconstruction error, mean L_align, kNN NLL proxy and "
                    "latent spread ratio for both.")
    align.add_argument("--lambda", dest="lam", type=float, help="alignment weight (default: the spec's)")
    align.add_argument("--from-sweep", metavar="ID", help="train with the setting (lambda, lr, draws, steps) and "
                                                         "against the prior that this sweep chose for each site")
    align.set_defaults(handler=cmd_align)
    return align


def _add_run(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run", help="each site's whole path: check -> fine-tune or refit where it says so -> align",
        description="For each site, as one chain of Ray tasks that starts as soon as the site's previous step "
                    "is done (sites never wait for each other): check against the core prior (or --prior), "
                    "fine-tune or refit a site prior where the check decided so, and align the site's encoder "
                    "to its prior (the site prior, or the checked prior on reuse). Each step keeps its own "
                    "record and name, so a rerun after a crash or a changed spec runs only what changed. Prints "
                    "one progress line and one line per finished site (--verbose: every step's lines; each "
                    "step's log is also saved under the store's ray-runs/site-run-*/<site>/ and named by its "
                    "record), then a table; exit status 1 names the sites that failed.")
    run.add_argument("--until", choices=UNTIL, default=UNTIL[-1],
                     help="stop each site's path after this step (default: %(default)s)")
    run.add_argument("--json", action="store_true", help="print each site's path as JSON")
    run.set_defaults(handler=cmd_run)
    return run


def _common_arguments(action: argparse.ArgumentParser, runs: bool, trains: bool) -> None:
    """The specs and the prior of every action; for those that run on Ray (``runs``), what they record and
    how they run; for those that train (``trains``), the GPU share."""
    action.add_argument("specs", nargs="+", metavar="SITE.yaml", help="site spec(s)")
    action.add_argument("--prior", metavar="ID", help="use this prior instead of the current core prior "
                                                      "(align: instead of the site's own)")
    if runs:
        add_record_arguments(action)
        action.add_argument("--force", action="store_true",
                            help="run the step even if a step with the same inputs (spec sections, prior, data "
                                 "fingerprint) already ran; without it a rerun prints and returns that record")
        action.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
        action.add_argument("--retries", type=int, default=SITE_RETRIES, metavar="N",
                            help="rerun a site task whose worker died (a lost node, an OOM kill) up to N times; "
                                 "an error the step raises is not retried (default: %(default)s)")
        action.add_argument("--verbose", action="store_true",
                            help="print every line of each site's steps (together, as each site finishes); "
                                 "by default one progress line and one line per site")
    if trains:
        action.add_argument("--gpu", type=gpu_share, nargs="?", const=1.0, default=0.0, metavar="SHARE",
                            help="train each site on a GPU: a share of one per site task (0.25 packs four "
                                 "sites per GPU); --gpu alone takes a whole GPU (default: CPU)")
    add_store_arguments(action)
