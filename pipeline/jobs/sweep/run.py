"""``run_sweep``: the sites' data, the experiments' names, the baselines, the trials, the choice per
site and the ``sweep`` record (see :mod:`pipeline.jobs.sweep`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ray import tune

from pipeline.errors import SpecError, TrainingError
from pipeline.hashing import json_digest
from pipeline.jobs import runtime
from pipeline.jobs.sweep.experiment import run_experiment
from pipeline.jobs.sweep.scheduling import grid_points, scheduler_of
from pipeline.jobs.sweep.trial import SiteData, settings_of, trainable, trial_entry
from pipeline.method.configs import EncoderLayout
from pipeline.progress import Say
from pipeline.registry import Record, Registry
from pipeline.sites.align import alignment_data, alignment_prior
from pipeline.sites.models import load_prior
from pipeline.storage import Store, validate_name
from pipeline.sweeps import SweepSpec, choose, pareto_front
from pipeline.tracking import tracked_registry


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left: its record, and whether this call ran it (``False``: it was recorded before)."""

    record: Record
    ran: bool

    @property
    def choices(self) -> dict[str, dict]:
        """Per site: the chosen trial's settings and numbers beside its lambda = 0 baseline's."""
        return self.record.config["choices"]

    @property
    def metrics(self) -> dict:
        """Trials, how many ran to the end, trial-epochs spent of the full grid's, seconds."""
        return self.record.metrics

    def summary(self) -> str:
        """One line: what was recorded and what the trials cost."""
        if not self.ran:
            return f"sweep {self.record.name} is already recorded as {self.record.id}"
        m = self.metrics
        return (f"sweep {self.record.name} recorded as {self.record.id}: {m['trials']} trials, {m['completed']} ran "
                f"to the end, {m['trial_epochs']} of {m['full_epochs']} trial-epochs ({m['compute_fraction']:.0%})")


def _digest(value: object) -> str:
    return json_digest(value)[:10]


def _network(layout: EncoderLayout) -> object:
    """The encoder's part of a sweep's identity: an MLP's widths as before conv encoders existed (same names)."""
    settings = layout.to_dict()
    return settings["widths"] if settings.keys() == {"widths"} else settings


def experiment_names(spec: SweepSpec, sites: dict[str, SiteData]) -> tuple[str, str]:
    """``(<spec name>-<digest>, <spec name>-baseline-<digest>)``: the same settings, priors and data give the
    same names (so a rerun resumes). The baselines depend only on the sites and the trial length, so sweeps
    that differ in their search space or scheduler share them."""
    identity = {s: [d.prior_id, d.fingerprint, d.alignment.to_dict(), _network(d.layout), d.seed]
                for s, d in sorted(sites.items())}
    return (f"{spec.name}-{_digest({'spec': spec.to_dict() | {'path': None}, 'sites': identity})}",
            f"{spec.name}-baseline-{_digest(identity)}")


def site_data(spec: SweepSpec, registry: Registry) -> dict[str, SiteData]:
    """Each site's prior (as ``site align`` would use), observations and target points in prior space."""
    sites: dict[str, SiteData] = {}
    for site in spec.sites:
        prior_id = alignment_prior(registry, site.site, site.target.scan().fingerprint)
        prior = load_prior(registry, prior_id)
        observations, target, target_nll = alignment_data(site, prior)
        if spec.select.metric == "nll_gap" and target_nll is None:
            raise SpecError(f"{site.path}: select.metric nll_gap needs the target's own kNN NLL, but the target "
                            "has too few rows to measure it; use metric knn_nll")
        sites[site.site] = SiteData(
            prior_id, prior, observations.values, target, target_nll, layout=site.encoder.layout(), seed=site.seed,
            alignment=replace(site.alignment, steps=spec.steps, log_every=spec.epoch_steps),
            fingerprint=observations.fingerprint)
    return sites


def _choices(spec: SweepSpec, sites: dict[str, SiteData], trials: list[dict], baselines: dict) -> tuple[dict, dict]:
    """Per site: the chosen setting with its numbers beside the baseline's, and the Pareto front
    (reconstruction vs alignment score) of the trials that ran to the end."""
    choices, fronts = {}, {}
    for site, data in sites.items():
        own = [t for t in trials if t["site"] == site]
        chosen = choose(own)
        if chosen is None:
            raise TrainingError(f"sweep {spec.name}: no trial of site {site} ran to the end")
        done = [t for t in own if t["completed"]]
        front = pareto_front([(spec.select.reconstruction(t["final"]), spec.select.score(t["final"], data.target_nll))
                              for t in done])
        fronts[site] = [done[i]["trial"] for i in front]
        base = baselines[site]["final"]
        choices[site] = {"trial": chosen["trial"], "prior": data.prior_id, **chosen["config"], "steps": spec.steps,
                         **{k: chosen["final"][k] for k in ("objective", "recon", "recon_median", "knn_nll", "spread",
                                                            "feasible")},
                         "baseline_recon": base["recon"], "baseline_recon_median": base["recon_median"],
                         "baseline_knn_nll": base["knn_nll"], "target_knn_nll": data.target_nll}
    return choices, fronts


def run_sweep(spec: SweepSpec, store: Store, address: str | None = None, say: Say = print,
              name: str | None = None, trust_store_state: bool = False,
              tags: dict[str, str] | None = None, reuse_actors: bool = True) -> SweepResult:
    """Run (or resume, or find the recorded) sweep, registered with ``tags``; ``say`` gets the progress lines.
    ``reuse_actors=False`` starts every trial in a new worker process (what ``benchmarks/sweep_scale.py``
    compares with). See :mod:`pipeline.jobs.sweep`."""
    started = time.perf_counter()
    registry = tracked_registry(store)
    sites = site_data(spec, registry)
    default_name, baseline_name = experiment_names(spec, sites)
    name = validate_name(name, "sweep name") if name else default_name
    fingerprint = json_digest({s: d.fingerprint for s, d in sorted(sites.items())})
    done = registry.find_run("sweep", name, legacy=True)
    if done:
        registry.same_run(done, fingerprint, {"experiment": default_name})
        return SweepResult(done, ran=False)

    gpu = spec.resources.gpu
    if runtime.connect(address) and gpu and runtime.available("GPU") < gpu:
        say(f"[sweep {spec.name}] resources.gpu is {gpu:g} but this local Ray has no GPU: trials run on CPUs")
        gpu = 0.0
    site_ids = [s.site for s in spec.sites]
    say(f"[sweep {spec.name}] {name}: {len(site_ids)} sites ({', '.join(site_ids)}), {spec.steps} steps "
        f"({spec.epochs} epochs) per trial, scheduler {spec.scheduler.type}")
    tags = tags or {}
    baselines = {}
    for ended in run_experiment(baseline_name, trainable(sites, spec, gpu),
                                {"point": tune.grid_search(grid_points(spec, site_ids, {"lam": 0.0}))}, 1,
                                len(site_ids), spec, store, None, say, trust_store_state, tags, reuse_actors):
        site = settings_of(ended.config)["site"]
        baselines[site] = trial_entry(ended, spec, sites[site])
        sites[site].baseline_recon = [spec.select.reconstruction(h) for h in baselines[site]["history"]]

    points = grid_points(spec, site_ids)
    space = {"point": tune.grid_search(points), **{d.field: d.to_tune() for d in spec.space if d.sampler != "grid"}}
    ended = run_experiment(name, trainable(sites, spec, gpu), space, spec.samples, len(points) * spec.samples, spec,
                           store, scheduler_of(spec, sites), say, trust_store_state, tags, reuse_actors)
    trials = [trial_entry(e, spec, sites[settings_of(e.config)["site"]]) for e in ended]
    choices, fronts = _choices(spec, sites, trials, baselines)
    trial_epochs = sum(t["epochs"] for t in trials)
    metrics = {"trials": len(trials), "completed": sum(t["completed"] for t in trials),
               "trial_epochs": trial_epochs, "full_epochs": len(trials) * spec.epochs,
               "compute_fraction": trial_epochs / (len(trials) * spec.epochs),
               "baseline_epochs": sum(e["epochs"] for e in baselines.values()),
               "seconds": time.perf_counter() - started}
    storage_path, _ = runtime.storage_for(store)
    record = registry.register(
        "sweep", parents=sorted({d.prior_id for d in sites.values()}), name=name, settings={"experiment": default_name},
        fingerprint=fingerprint, tags=tags,
        config={"spec": spec.to_dict(), "experiment": f"{storage_path}/{name}", "choices": choices, "pareto": fronts,
                "baselines": baselines, "trials": trials},
        metrics=metrics)
    return SweepResult(record, ran=True)
