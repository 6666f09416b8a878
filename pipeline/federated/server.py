"""The federated run, as the server drives it over any link to the sites (Flower's grid in
:mod:`~pipeline.federated.flower`, in-process calls in :mod:`~pipeline.federated.local`).

    record = fit_federated(link, spec, store)

1. Wait until every site of ``spec.sites`` has described itself; refuse the run if their columns differ.
2. Merge their moments and fit the map to prior space (or take both from the last round's checkpoint).
3. Rounds: each site starts from the global weights, the server averages the returned weights by rows and
   checkpoints. A round counts when ``min_sites`` sites reply (others may drop out); else it is tried again.
   A site that reconnects is asked to describe itself again and, if its data is unchanged, rejoins.
4. Each site's held-out loss of the final prior, then one ``prior`` record (the fleet's core, unless told
   otherwise) whose lineage names every site's data fingerprint and spec digest, the rounds, the sites per
   round and the bytes exchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from pipeline.data.schema import FeatureSchema
from pipeline.errors import DataError, FlowpriorError
from pipeline.federated.rounds import (
    CHECKPOINTS,
    RoundCheckpoint,
    agree_contract,
    data_fingerprint,
    ema_update,
    merge_moments,
    round_decay,
    weighted_average,
)
from pipeline.federated.spec import FederatedSpec, Privacy, run_settings
from pipeline.method.moments import Moments
from pipeline.method.prior import FlowPrior, fit_info
from pipeline.method.prior_space import PriorSpace
from pipeline.method.velocity import VelocityMLP
from pipeline.registry import Record, Registry
from pipeline.sites.models import publish_prior
from pipeline.storage import Store

Say = Callable[[str], None]


@dataclass(frozen=True)
class Update:
    """One site's reply to a training round: its weights, its training rows, its mean local loss, its AdamW state
    (with ``share_optimiser``; else empty)."""

    weights: dict[str, torch.Tensor]
    rows: int
    train_fm: float
    optimiser: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Instructions:
    """What every site gets for a round besides the global weights and the map to prior space."""

    round: int
    first_step: int
    steps: int
    batch_size: int
    mu: float
    optimiser: dict[str, torch.Tensor] | None  # the global AdamW state to continue (empty: start one), or None
    fingerprints: dict[str, str]  # each site's data as described: a site whose data changed refuses to train


class Sites(Protocol):
    """The server's link to the sites. Each method returns the replies that came, by site id; a site that failed
    or did not answer in time is missing. ``bytes_exchanged`` counts payload bytes both ways so far."""

    bytes_exchanged: int

    def describe(self, sites: tuple[str, ...], timeout: float) -> dict[str, dict]: ...

    def moments(self, sites: list[str], privacy: Privacy | None) -> dict[str, Moments]: ...

    def train(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
              instructions: Instructions) -> dict[str, Update]: ...

    def evaluate(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
                 seed: int) -> dict[str, dict[str, float]]: ...


class FederationError(FlowpriorError, RuntimeError):
    """A federated run cannot go on (too few sites, a site's data changed); its checkpoints remain for a rerun."""


def fit_federated(link: Sites, spec: FederatedSpec, store: Store, say: Say = print, make_current: bool = True,
                  on_round: Callable[[RoundCheckpoint], None] | None = None) -> Record:
    """Run ``spec`` over ``link`` and register the prior under ``store`` (see the module docstring);
    ``on_round`` sees each round's checkpoint once it is saved (a benchmark's evaluation)."""
    spec = spec.with_name()
    registry = Registry(store)
    prefix = f"{CHECKPOINTS}/{spec.name}"
    if (done := registry.find_run("prior", spec.name)) is not None:
        registry.complete(done, make_current)
        say(f"[federated] run {spec.name} is already registered as {done.id}")
        return done
    state = RoundCheckpoint.latest(store, prefix)
    descriptions, contract = _join(link, spec, say)
    if state is None:
        state = _start(link, spec, descriptions, contract, say)
    else:
        _require_same_data(state.sites, descriptions)
        say(f"[federated] resuming {spec.name} after round {state.round} of {spec.rounds}")
    started = time.perf_counter()
    while state.round < spec.rounds:
        state = _round(link, spec, state, say)
        state.save(store, prefix)
        if on_round is not None:
            on_round(state)
    heldout = link.evaluate(list(spec.sites), state.ema, state.space, spec.seed)
    record = _register(registry, spec, state, heldout, link.bytes_exchanged, make_current)
    say(f"[federated] {spec.rounds} rounds in {time.perf_counter() - started:.0f} s; registered {record.id}; "
        f"held-out FM by site: " + ", ".join(f"{s} {v['heldout_fm']:.4f}" for s, v in sorted(heldout.items())))
    return record


def _join(link: Sites, spec: FederatedSpec, say: Say) -> tuple[dict[str, dict], tuple[list[str], list[str]]]:
    """Every site's description (waiting up to ``join_timeout``) and the columns and types they agree on."""
    say(f"[federated] waiting for {len(spec.sites)} sites: {', '.join(spec.sites)}")
    descriptions = link.describe(spec.sites, spec.join_timeout)
    missing = [s for s in spec.sites if s not in descriptions]
    if missing:
        raise FederationError(f"sites {', '.join(missing)} did not connect within {spec.join_timeout:.0f} s; start "
                              f"their SuperNodes (flowprior federated join) and rerun; nothing was trained")
    return descriptions, agree_contract(descriptions)


def _start(link: Sites, spec: FederatedSpec, descriptions: dict[str, dict], contract: tuple[list[str], list[str]],
           say: Say) -> RoundCheckpoint:
    """Round 0: the merged moments, the map to prior space, the contract and fresh weights."""
    moments = link.moments(list(spec.sites), spec.privacy)
    missing = [s for s in spec.sites if s not in moments]
    if missing:
        raise FederationError(f"sites {', '.join(missing)} sent no moments; nothing was trained")
    merged = merge_moments(moments[s] for s in spec.sites)
    columns, dtypes = contract
    space = PriorSpace.fit(merged, spec.latent_dim, spec.projection, spec.normaliser, spec.seed)
    schema = FeatureSchema.from_moments(columns, dtypes, merged.mean, merged.covariance)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        weights = VelocityMLP(spec.velocity(space.latent_dim)).state_dict()
    say(f"[federated] map to prior space fitted on {merged.n:,} rows' moments from {len(moments)} sites"
        + (f" (DP noise, epsilon {spec.privacy.epsilon:g})" if spec.privacy else ""))
    history = [{"round": 0, "sites": sorted(moments), "bytes": link.bytes_exchanged}]
    return RoundCheckpoint(0, weights, {k: v.clone() for k, v in weights.items()}, space, schema, descriptions,
                           history)


def _require_same_data(known: dict[str, dict], descriptions: dict[str, dict]) -> None:
    for site, description in descriptions.items():
        if site in known and description["fingerprint"] != known[site]["fingerprint"]:
            raise DataError(f"site {site}: its data changed since the run began (fingerprint "
                            f"{known[site]['fingerprint'][:12]} then, {description['fingerprint'][:12]} now); "
                            f"start a new run (another --name)")


def _round(link: Sites, spec: FederatedSpec, state: RoundCheckpoint, say: Say) -> RoundCheckpoint:
    """One round, tried up to ``spec.retries`` times until ``min_sites`` sites reply."""
    r = state.round + 1
    shared = state.optimiser if spec.share_optimiser else None
    instructions = Instructions(r, (r - 1) * spec.local_steps, spec.local_steps, spec.site_batch, spec.proximal_mu,
                                shared, {s: d["fingerprint"] for s, d in state.sites.items()})
    started, before = time.perf_counter(), link.bytes_exchanged
    for attempt in range(1, spec.retries + 1):
        updates = link.train(list(spec.sites), state.weights, state.space, instructions)
        if len(updates) >= spec.min_sites_needed:
            break
        say(f"[federated] round {r}: {len(updates)} of {len(spec.sites)} sites replied, {spec.min_sites_needed} "
            f"needed (attempt {attempt} of {spec.retries})")
    else:
        raise FederationError(f"round {r}: fewer than {spec.min_sites_needed} sites replied in {spec.retries} "
                              f"attempts; rerun with the same --name to resume from round {r - 1}")
    weights = weighted_average([(u.weights, u.rows) for u in updates.values()])
    optimiser = weighted_average([(u.optimiser, u.rows) for u in updates.values()]) if spec.share_optimiser else {}
    ema = ema_update(state.ema, weights, round_decay(spec.fit, spec.local_steps, instructions.first_step))
    rows = sum(u.rows for u in updates.values())
    train_fm = sum(u.train_fm * u.rows for u in updates.values()) / rows
    entry = {"round": r, "sites": sorted(updates), "train_fm": train_fm, "bytes": link.bytes_exchanged - before,
             "seconds": time.perf_counter() - started}
    missing = sorted(set(spec.sites) - set(updates))
    say(f"[federated] round {r}/{spec.rounds}: {len(updates)} sites, train FM {train_fm:.4f}, "
        f"{entry['bytes'] / 2**20:.2f} MiB, {entry['seconds']:.1f} s"
        + (f"; no update from {', '.join(missing)}" if missing else ""))
    return RoundCheckpoint(r, weights, ema, state.space, state.schema, state.sites, [*state.history, entry],
                           optimiser)


def fleet_metrics(by_site: dict[str, dict[str, float]]) -> dict[str, float]:
    """The sites' held-out metrics as one prior's: each a mean over the sites weighted by their held-out rows
    (``nll_samples``: the fewest any site drew), plus each site's held-out FM as ``heldout_fm.<site>``."""
    rows = {s: m["heldout_rows"] for s, m in by_site.items()}
    total = sum(rows.values())
    names = [k for k in next(iter(by_site.values())) if k not in ("heldout_rows", "nll_samples")]
    out = {k: sum(m[k] * rows[s] for s, m in by_site.items()) / total for k in names}
    out["nll_samples"] = min(m["nll_samples"] for m in by_site.values())
    return {**out, **{f"heldout_fm.{s}": m["heldout_fm"] for s, m in by_site.items()}}


def _register(registry: Registry, spec: FederatedSpec, state: RoundCheckpoint, heldout: dict[str, dict[str, float]],
              bytes_exchanged: int, make_current: bool) -> Record:
    """The final EMA weights as a core prior; lineage and federation facts in its config."""
    velocity = VelocityMLP(spec.velocity(state.space.latent_dim))
    velocity.load_state_dict(state.ema)
    history = [h for h in state.history if h["round"] > 0]
    prior = FlowPrior(velocity, state.space, {**fit_info(state.space, spec.fit, history, spec.seed),
                                              "features": state.schema.to_dict()})
    federation = {"sites": state.sites, "rounds": state.round, "strategy": spec.strategy,
                  "mu": spec.proximal_mu, "local_steps": spec.local_steps, "min_sites": spec.min_sites_needed,
                  "sites_per_round": [len(h["sites"]) for h in history],
                  "bytes_exchanged": sum(h["bytes"] for h in state.history),
                  "bytes_exchanged_this_run": bytes_exchanged,
                  "privacy": None if spec.privacy is None else spec.to_dict()["privacy"]}
    metrics = {**(fleet_metrics(heldout) if heldout else {}), "train_fm": history[-1]["train_fm"] if history else None}
    return publish_prior(registry, prior, fingerprint=data_fingerprint(state.sites),
                         config={"federated": federation, "spec": spec.to_dict()},
                         metrics={k: v for k, v in metrics.items() if v is not None}, name=spec.name,
                         settings=run_settings(spec), make_current=make_current)
