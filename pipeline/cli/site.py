"""``flowprior site check|finetune|align SITE.yaml...``: the per-site steps, one spec per site."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.common import add_precision_argument, add_store_arguments, gpu_share, open_store


def _specs(args: argparse.Namespace) -> list:
    from pipeline.sites import load_site_spec

    specs = [load_site_spec(path) for path in args.specs]  # every spec is checked before any work starts
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.site in seen:
            raise ValueError(f"{spec.path} and {seen[spec.site]} both describe site {spec.site!r}")
        seen[spec.site] = spec.path
    return specs


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import check_site
    from pipeline.registry import Registry

    specs, registry = _specs(args), Registry(open_store(args))
    checks = [check_site(spec, registry, args.prior, say=print if not args.json else lambda _: None) for spec in specs]
    if args.json:
        print(json.dumps([{"site": c.site, "decision": c.config["decision"], "check": c.id, "prior": c.parents[0],
                           **c.metrics} for c in checks], indent=1))
        return 0
    print(f"{'site':10s} {'decision':9s} {'probe':>6s} {'fm_ratio':>8s} {'nll_gap':>8s} {'mmd':>8s}  check")
    for c in checks:
        m = c.metrics
        print(f"{c.site:10s} {c.config['decision']:9s} {m['probe_gain']:6.1%} {m['fm_ratio']:8.3f} {m['nll_gap']:+8.3f} {m['mmd']:8.4f}  {c.id}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import finetune_site, run_sites

    specs = _specs(args)
    records = run_sites(finetune_site, specs, open_store(args), address=args.address, gpu=args.gpu, mode=args.mode,
                        prior_id=args.prior, precision=args.precision)
    for spec, record in zip(specs, records):
        print(f"{spec.site:10s} " + (f"{record.config['mode']:8s} {record.id}  held-out FM {record.metrics['heldout_fm_core']:.4f}"
                                     f" (core) -> {record.metrics['heldout_fm']:.4f}" if record else "reuse    (nothing to train)"))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from pipeline.jobs.sites import align_site, run_sites

    specs = _specs(args)
    results = run_sites(align_site, specs, open_store(args), address=args.address, gpu=args.gpu, lam=args.lam,
                        prior_id=args.prior, sweep_id=args.from_sweep)
    print(f"{'site':10s} {'lambda':>6s} {'recon':>8s} {'recon@0':>8s} {'knn_nll':>8s} {'nll@0':>8s} {'spread':>6s}  encoder -> prior")
    for r in results:
        m = r.record.metrics
        print(f"{r.record.site:10s} {r.record.config['lambda']:6g} {m['recon']:8.4f} {m['baseline_recon']:8.4f} "
              f"{m['knn_nll']:8.3f} {m['baseline_knn_nll']:8.3f} {m['spread']:6.2f}  {r.record.id} -> {r.record.aligned_to}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("site", help="per-site check, fine-tune/refit and encoder alignment",
                                 description="Per-site commands. Each takes one or more site specs "
                                             "(sites/<site>.yaml); several sites run in parallel on Ray.")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check", help="decide reuse / finetune / refit for sites against the core prior",
        description="Measure how well the core prior (or --prior) explains each site's held-out target features "
                    "-- held-out FM loss and kNN NLL proxy relative to the core's own held-out data, MMD of prior "
                    "samples vs the site -- decide reuse, finetune or refit with the spec's thresholds, print the "
                    "numbers and record a site-check in the registry. Runs in this process (no Ray).")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")

    finetune = sub.add_parser(
        "finetune", help="fine-tune (or refit) site priors from the core prior, in parallel on Ray",
        description="Train a site prior per site as a Ray task: from the core prior's weights (finetune) or from "
                    "scratch in its space (refit), and register it as a site-prior whose parent is the core "
                    "prior. --mode auto (default) follows the site's latest check (checking first if needed) "
                    "and skips sites whose decision is reuse.")
    finetune.add_argument("--mode", choices=("auto", "finetune", "refit"), default="auto")
    add_precision_argument(finetune)

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

    for action in (check, finetune, align):
        action.add_argument("specs", nargs="+", metavar="SITE.yaml", help="site spec(s)")
        action.add_argument("--prior", metavar="ID", help="use this prior instead of the current core prior "
                                                          "(align: instead of the site's own)")
        if action is not check:
            action.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
            action.add_argument("--gpu", type=gpu_share, nargs="?", const=1.0, default=0.0, metavar="SHARE",
                                help="train each site on a GPU: a share of one per site task (0.25 packs four "
                                     "sites per GPU); --gpu alone takes a whole GPU (default: CPU)")
        add_store_arguments(action)
    check.set_defaults(handler=cmd_check)
    finetune.set_defaults(handler=cmd_finetune)
    align.set_defaults(handler=cmd_align)
