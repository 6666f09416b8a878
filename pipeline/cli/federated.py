"""``flowprior federated``: a core prior fitted by sites that keep their rows (Flower; see docs/fleet.md).

``join`` (a site lead, beside the site's data) checks the site spec, shows what the site will tell the server,
and runs a Flower SuperNode for it; ``fit`` (the platform team) submits the run to the SuperLink, follows its
log and prints the registered prior. The SuperLink itself is Flower's ``flower-superlink``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipeline.cli.common import add_store_arguments, open_store, positive
from pipeline.errors import TrainingError
from pipeline.federated.spec import STRATEGIES, FederatedSpec, Privacy
from pipeline.method.configs import NORMALISERS, PROJECTIONS, FitConfig

SPEC = FederatedSpec(sites=("a",))  # each flag's default is the spec's
SUPERNODE_PORT = 9094  # Flower's default: the SuperNode's local Runtime API, which its ClientApps call


def cmd_join(args: argparse.Namespace) -> int:
    from pipeline.federated.deployment import flower_env, supernode_command
    from pipeline.federated.site import SiteRows
    from pipeline.sites.spec import load_site_spec

    spec_path = Path(args.site_spec).resolve()
    site = load_site_spec(spec_path)
    rows = SiteRows.load(site, SPEC.heldout_fraction)  # reads the rows as the ClientApp will, with these credentials
    d = rows.description
    print(f"[federated] site {site.site}: {d['train_rows']:,} training and {d['heldout_rows']:,} held-out rows of "
          f"{len(d['columns'])} columns from {site.target.uri}; the server will see: {json.dumps(d)}", flush=True)
    command = supernode_command(args.superlink, str(spec_path), args.port, args.threads, args.insecure,
                                args.root_certificates)
    print(f"[federated] starting the SuperNode: {' '.join(command)}", flush=True)
    os.execve(command[0], command, flower_env())  # the SuperNode takes this process's place (and its signals)


def cmd_fit(args: argparse.Namespace) -> int:
    from pipeline.federated.deployment import Submission
    from pipeline.registry import Registry
    from pipeline.registry.registry import named_id

    privacy = None if args.dp_epsilon is None else Privacy(args.dp_epsilon, args.dp_delta, args.dp_clip)
    spec = FederatedSpec(
        sites=tuple(s for s in args.sites.split(",") if s), name=args.name, rounds=args.rounds,
        local_steps=args.local_steps, strategy=args.strategy, mu=args.mu, min_sites=args.min_sites,
        share_optimiser=not args.fresh_optimiser,
        fit=FitConfig(batch_size=args.batch_size, lr=args.lr, warmup=args.warmup), latent_dim=args.latent_dim,
        projection=args.projection, normaliser=args.normaliser, width=args.width, depth=args.depth,
        privacy=privacy, round_timeout=args.round_timeout, join_timeout=args.join_timeout, seed=args.seed).with_name()
    store = open_store(args)
    registry_uri = store.uri if not store.is_local else str(store.backend.root.resolve())
    submission = Submission(args.superlink, args.insecure, args.root_certificates)
    try:
        run_id = submission.submit({"spec": spec.to_json(), "registry": registry_uri,
                                    "make-current": not args.no_make_current})
        print(f"[federated] run {spec.name}: Flower run {run_id} on {args.superlink}; rerun with --name {spec.name} "
              f"to resume after a failure", flush=True)
        submission.follow(run_id)
        status = submission.status(run_id)
    finally:
        submission.close()
    traffic = status.get("network-traffic", {})
    print(f"[federated] Flower run {run_id}: {status.get('status')}, {status.get('elapsed')}; network traffic "
          f"{json.dumps(traffic)}", flush=True)
    if status.get("status") != "finished:completed":
        raise TrainingError(f"Flower run {run_id} ended {status.get('status')} (its log is above). Rerun with --name "
                            f"{spec.name} to resume from its last round")
    record = Registry(store).get(named_id("prior", spec.name))
    heldout = {k.split(".", 1)[1]: v for k, v in record.metrics.items() if k.startswith("heldout_fm.")}
    print(f"prior {record.id}  run {record.name}  rounds {record.config['federated']['rounds']}  held-out FM "
          + "  ".join(f"{s} {v:.4f}" for s, v in sorted(heldout.items()))
          + f"  artifact {store.uri_of(record.artifact)}")
    return 0


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="no TLS (a test bench on one host only)")
    tls.add_argument("--root-certificates", metavar="PEM", help="CA certificates to verify the SuperLink's TLS")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("federated", help="fit the core prior with sites that keep their data (Flower)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="ACTION")
    join = sub.add_parser("join", help="serve this site to a federated fit (a Flower SuperNode)",
                          description="Check the site spec, read its target rows with this machine's credentials, "
                                      "print exactly what the server will learn about them, then run a Flower "
                                      "SuperNode that answers the run's messages. Rows never leave this machine; "
                                      "see docs/fleet.md for what does.")
    join.add_argument("--site-spec", required=True, metavar="YAML", help="the site's spec (its target is read)")
    _connection(join)
    join.add_argument("--port", type=positive, default=SUPERNODE_PORT,
                      help="the SuperNode's local Runtime API port (its ClientApps call it on 127.0.0.1); one per "
                           "SuperNode on a host (default: %(default)s)")
    join.add_argument("--threads", type=positive, default=1, help="torch threads for local training (default: 1)")
    join.set_defaults(handler=cmd_join)
    fit = sub.add_parser("fit", help="run a federated core-prior fit on a SuperLink and register the prior",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Submit the run to the SuperLink (flwr run), follow its log, print the prior.\n\n"
                                     "Round 1 waits until every --sites site has joined; sites whose columns differ "
                                     "are refused\nbefore it. A round counts once --min-sites sites reply; the "
                                     "server checkpoints every round\nunder <store>/federated/<name>/, and a rerun "
                                     "with the same --name resumes. The prior is\nregistered in --store (which the "
                                     "SuperLink must reach) as the fleet's core prior.")
    fit.add_argument("--sites", required=True, metavar="A,B,...", help="the site ids taking part")
    _connection(fit)
    _fit_arguments(fit)
    add_store_arguments(fit)
    fit.set_defaults(handler=cmd_fit)


def _fit_arguments(fit: argparse.ArgumentParser) -> None:
    fit.add_argument("--name", help="run name; rerun with it to resume (default: a fresh one)")
    fit.add_argument("--rounds", type=positive, default=SPEC.rounds, help="rounds (default: %(default)s)")
    fit.add_argument("--local-steps", type=positive, default=SPEC.local_steps,
                     help="steps each site takes per round (default: %(default)s)")
    fit.add_argument("--strategy", choices=STRATEGIES, default=SPEC.strategy,
                     help="fedavg: average by rows; fedprox: also a proximal term on each site (default: %(default)s)")
    fit.add_argument("--mu", type=float, default=SPEC.mu, help="FedProx's proximal weight (default: %(default)s)")
    fit.add_argument("--fresh-optimiser", action="store_true",
                     help="each site starts a fresh AdamW every round instead of the global state: a third of the "
                          "bytes, but far worse on sites that differ (docs/measured.md)")
    fit.add_argument("--min-sites", type=positive, help="sites a round needs (default: all but one)")
    fit.add_argument("--batch-size", type=positive, default=SPEC.fit.batch_size,
                     help="global batch of a step, split over the sites (default: %(default)s)")
    fit.add_argument("--lr", type=float, default=SPEC.fit.lr, help="peak learning rate (default: %(default)g)")
    fit.add_argument("--warmup", type=int, default=SPEC.fit.warmup, help="warm-up steps (default: %(default)s)")
    fit.add_argument("--latent-dim", type=positive, help="prior dimension (default: the feature dimension)")
    fit.add_argument("--projection", choices=PROJECTIONS, help="features -> prior space")
    fit.add_argument("--normaliser", choices=NORMALISERS, default=SPEC.normaliser)
    fit.add_argument("--width", type=positive, default=SPEC.width, help="velocity MLP width (default: %(default)s)")
    fit.add_argument("--depth", type=positive, default=SPEC.depth, help="AdaLN blocks (default: %(default)s)")
    fit.add_argument("--dp-epsilon", type=float, help="Gaussian noise on each site's moments at this epsilon (<= 1)")
    fit.add_argument("--dp-delta", type=float, default=1e-6, help="the moments' delta (default: %(default)g)")
    fit.add_argument("--dp-clip", type=float, default=10.0, help="rows clipped to this L2 norm first (default: "
                                                                 "%(default)g)")
    fit.add_argument("--round-timeout", type=float, default=SPEC.round_timeout,
                     help="seconds a round waits for replies (default: %(default)g)")
    fit.add_argument("--join-timeout", type=float, default=SPEC.join_timeout,
                     help="seconds to wait for every site before round 1 (default: %(default)g)")
    fit.add_argument("--no-make-current", action="store_true", help="register without making it the core prior")
    fit.add_argument("--seed", type=int, default=SPEC.seed)
