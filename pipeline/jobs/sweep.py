"""A sweep as one Ray Tune experiment across all its sites, resumable, with a per-site choice recorded.

    record = run_sweep(load_sweep_spec("tuning/lambda.yaml"), Store.open("s3://bucket/flowprior"))

1. For each site: the prior its encoder aligns to (its site prior, or the core prior on ``reuse``),
   its observations and target points in prior space, as for ``flowprior site align``.
2. Baselines: one lambda = 0 run per site (Tune experiment ``<name>-baseline``, run to the end);
   its reconstruction error is the reference of the selection rule.
3. Trials: Tune experiment ``<name>`` over sites x search space. Each trial is a *function
   trainable* that trains one site's encoder, reports every ``epoch_steps`` steps (reconstruction,
   ``L_align``, kNN NLL proxy, spread, objective) with its training state as a tensor-only
   checkpoint. ASHA compares a trial only with its own site's trials (objectives of different sites
   are on different scales). A Ray Train ``TorchTrainer`` per trial is avoided on purpose: in Ray
   2.60 an ASHA-stopped trial that wraps one keeps its placement group (ray-project/ray#54305).
4. A ``sweep`` record with every trial's settings and metrics, the choice per site (lowest
   objective among trials that ran to the end, see ``pipeline.sweeps.objective``) and the Pareto
   front; ``flowprior site align --from-sweep ID`` trains with the choice.

Experiments live under the store (``<store>/ray-runs/<name>``, local or S3). The name is
``<spec name>-<digest>`` of the settings and of each site's prior and data: rerunning the same
command resumes an interrupted sweep with ``Tuner.restore`` (finished trials are kept, unfinished
ones continue from their last epoch) or returns the recorded sweep; a changed spec, prior or data
is a new sweep. Tune keeps its experiment state as pickles, and unpickling runs code: a sweep resumes
only with ``trust_store_state`` (``--trust-store-state``), else finding such state is an error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pipeline.errors import SpecError, UntrustedState
from pipeline.jobs import runtime
from pipeline.jobs.sites import alignment_data, alignment_prior
from pipeline.method.encoder import AlignConfig, EncoderTraining
from pipeline.method.prior import FlowPrior
from pipeline.progress import duration
from pipeline.registry import Record, Registry
from pipeline.storage import Store, validate_name
from pipeline.sweeps import Selection, SweepSpec, choose, pareto_front
from pipeline.sweeps.spec import SWEPT
from pipeline.tracking import TAG, Tracking

Say = Callable[[str], None]
STATE_FILE = "training.safetensors"
HISTORY_KEYS = ("epoch", "recon", "recon_median", "l_align", "knn_nll", "spread", "objective")


class SweepInterrupted(RuntimeError):
    """The Tune experiment stopped before every trial ended (Ctrl+C); rerunning the same command resumes it."""


@dataclass
class SiteData:
    """What one site's trials need, shipped to them once through Ray's object store."""

    prior_id: str
    prior: FlowPrior
    observations: np.ndarray  # (n, d_obs)
    target: torch.Tensor  # (m, d1) target points in prior space
    target_nll: float | None  # their kNN NLL proxy: the value of latents distributed like the target
    alignment: AlignConfig  # the site spec's, with the sweep's steps and epoch_steps
    widths: tuple[int, ...]
    seed: int
    fingerprint: str
    baseline_recon: list[float] | None = None  # the lambda = 0 run's, per epoch: filled in after the baselines ran


def settings_of(config: dict) -> dict:
    """A trial's flat settings: its grid point (``site`` and the grid dimensions) and any sampled ones."""
    return {**config.get("point", {}), **{k: v for k, v in config.items() if k != "point"}}


def grid_points(spec: SweepSpec, sites: list[str], fixed: dict | None = None) -> list[dict]:
    """Every combination of the grid dimensions in the order the spec lists their values (the first
    dimension slowest), each for every site in turn: trials start in this order, so each site's trials
    run mostly one after another and its first ones span the grid (list values coarse-to-fine)."""
    grids = [d for d in spec.space if d.sampler == "grid"] if fixed is None else []
    combos = itertools.product(*[d.values for d in grids])
    return [{**(fixed or {}), **dict(zip([d.field for d in grids], combo, strict=True)), "site": site}
            for combo in combos for site in sites]


def _trial(config: dict, sites: dict, selection: Selection, epoch_steps: int, threads: int, device: str) -> None:
    """One Tune trial: train its site's encoder with its settings (``lam``, ``lr``, ``draws``; see
    :func:`settings_of`), continuing from the trial's checkpoint if it has one; report every epoch.
    ``sites`` maps each site to the object reference of its :class:`SiteData`."""
    import ray

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint
    torch.set_num_threads(threads)
    config = settings_of(config)
    data: SiteData = ray.get(sites[config["site"]])
    align = replace(data.alignment, **{k: config[k] for k in SWEPT if k in config})
    observations = np.array(data.observations)  # a writable copy of the object store's read-only array
    training = EncoderTraining(observations, data.prior, align, data.target, data.widths, data.seed, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            training.resume(Path(folder) / STATE_FILE)
    while not training.done:
        entry = training.advance(epoch_steps)[-1]
        metrics = {k: entry[k] for k in ("step", "recon", "recon_median", "l_align", "knn_nll", "spread")}
        metrics["epoch"] = math.ceil(training.step / epoch_steps)
        if data.baseline_recon is not None:
            # against the baseline at the same epoch: early rungs compare like with like
            metrics["objective"] = selection.objective(metrics, data.baseline_recon[metrics["epoch"] - 1],
                                                       data.target_nll)
        with tempfile.TemporaryDirectory() as folder:
            training.save(Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


class PerSiteASHA(FIFOScheduler):
    """ASHA run separately for each site's trials: a trial is only compared
    with its own site's trials, whose objectives are on the same scale."""

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__()
        self.settings = {"metric": "objective", "mode": "min", "max_t": spec.epochs,
                         "grace_period": spec.scheduler.grace_epochs,
                         "reduction_factor": spec.scheduler.reduction_factor}
        self.by_site: dict[str, ASHAScheduler] = {}

    def _of(self, trial) -> ASHAScheduler:
        site = settings_of(trial.config)["site"]
        if site not in self.by_site:
            self.by_site[site] = ASHAScheduler(**self.settings)
        return self.by_site[site]

    def on_trial_add(self, controller, trial) -> None:
        self._of(trial).on_trial_add(controller, trial)

    def on_trial_result(self, controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(controller, trial, result)

    def on_trial_complete(self, controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(controller, trial, result)

    def on_trial_remove(self, controller, trial) -> None:
        self._of(trial).on_trial_remove(controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{site}: {s.debug_string()}" for site, s in self.by_site.items())


class Progress(tune.Callback):
    """One line per trial that ends, with what it reached and the running count. Tune pickles its
    callbacks with the experiment (and a resumed run unpickles them), so the output function is not
    part of the instance: ``_experiment`` sets it for the run in progress."""

    say: Callable[[str], None] = staticmethod(print)

    def __init__(self, label: str, total: int, epochs: int) -> None:
        self.label, self.total, self.epochs, self.ended = label, total, epochs, 0
        self.started, self.ended_before = time.monotonic(), 0

    def get_state(self) -> dict:  # saved with the experiment, so a resumed sweep counts on
        return {"ended": self.ended}

    def set_state(self, state: dict) -> None:
        self.ended = self.ended_before = state["ended"]
        self.started = time.monotonic()  # the ETA follows this run's pace

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended += 1
        r, c = trial.last_result or {}, settings_of(trial.config)
        epoch = r.get("epoch", 0)
        how = "ran to the end" if epoch >= self.epochs else f"stopped at epoch {epoch}/{self.epochs}"
        settings = " ".join(f"{k} {c[k]}" if isinstance(c[k], str) else f"{k} {c[k]:g}" for k in SWEPT if k in c)
        objective = f"  objective {r['objective']:.3f}" if "objective" in r else ""
        # the pace of this run (a resumed sweep's earlier trials took no time here); the count is all trials
        done, left = self.ended - self.ended_before, self.total - self.ended_before
        elapsed = time.monotonic() - self.started
        eta = f", ETA {duration(elapsed * (left - done) / done)}" if 0 < done < left else ""
        self.say(f"[{self.label}] {self.ended}/{self.total} trials, {duration(elapsed)}{eta}: {c['site']} {settings}: "
                 f"{how}  recon {r.get('recon', math.nan):.4f}  knn_nll {r.get('knn_nll', math.nan):.3f}{objective}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        site = settings_of(trial.config)["site"]
        self.say(f"[{self.label}] trial {trial.trial_id} ({site}) failed; see {trial.path}")


def _trial_folder(trial) -> str:
    return f"{settings_of(trial.config)['site']}-{trial.trial_id}"


def _experiment(name: str, trainable, param_space: dict, samples: int, total: int, spec: SweepSpec,
                store: Store, scheduler, say: Say, trust_store_state: bool, tags: dict[str, str]) -> list:
    """Run the Tune experiment ``name`` under the store, or resume it if it exists there; its Results.
    With MLflow tracking on, each trial is also an MLflow run tagged with ``tags`` (a resumed experiment
    keeps the callbacks it started with)."""
    # trials checkpoint every epoch and Tune snapshots its state with each (what resuming needs): no warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, our progress lines only
    Progress.say = staticmethod(say)
    storage_path, filesystem = runtime.storage_for(store)
    path = f"{storage_path}/{name}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        if not trust_store_state:
            raise UntrustedState(
                f"sweep {spec.name}: the Tune experiment {path} exists (an interrupted run). Resuming it unpickles "
                "its state, which runs code from the store on this driver: rerun with --trust-store-state if only "
                "trusted jobs can write there, or pass another --name to start over")
        say(f"[sweep {spec.name}] picking up the Tune experiment {path}: finished trials are kept, unfinished ones "
            "resume")
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        tracking = Tracking.from_env()
        run_tags = {f"{TAG}sweep": spec.name, f"{TAG}experiment": name, **tags}
        mlflow = [tracking.tune_callback(run_tags)] if tracking else []
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=samples, scheduler=scheduler,
                                        max_concurrent_trials=spec.max_concurrent or None,
                                        trial_dirname_creator=_trial_folder),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem, verbose=0,
                                      callbacks=[Progress(f"sweep {name}", total, spec.epochs), *mlflow],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"sweep {spec.name}: {len(grid.errors)} trial(s) of {name} failed; the first: "
                           f"{grid.errors[0]}") from grid.errors[0]
    # after Ctrl+C Tune reports every trial as terminated; the state it saved says which were not
    saved = tune.ExperimentAnalysis(path, storage_filesystem=filesystem).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if ended < len(saved):
        raise SweepInterrupted(f"sweep {spec.name}: interrupted with {ended} of {len(saved)} trials of {name} "
                               f"ended; rerun the same command to resume ({path})")
    return list(grid)


def _trainable(sites: dict, spec: SweepSpec, gpu: float):
    """The trial function with its parameters: one object reference per site, so a trial fetches only its
    own site's prior, observations and target points, never the other sites' arrays."""
    import ray

    refs = {site: ray.put(data) for site, data in sites.items()}
    trainable = tune.with_parameters(_trial, sites=refs, selection=spec.select, epoch_steps=spec.epoch_steps,
                                     threads=max(1, int(spec.resources.cpu)), device="cuda" if gpu else "cpu")
    return tune.with_resources(trainable, {k.lower(): v for k, v in spec.resources.shape(gpu).items()})


def _history(result) -> list[dict]:
    frame = result.metrics_dataframe
    columns = [k for k in HISTORY_KEYS if k in frame.columns]
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in frame[columns].to_dict("records")]


def _trial_entry(result, spec: SweepSpec, data: SiteData) -> dict:
    config = settings_of(result.config)
    settings = {k: config.get(k, getattr(data.alignment, k)) for k in SWEPT}
    history = _history(result)
    final = {k: history[-1][k] for k in HISTORY_KEYS if k in history[-1]}
    if data.baseline_recon is not None:
        final["feasible"] = spec.select.feasible(final, data.baseline_recon[-1])
    return {"trial": Path(result.path).name, "site": config["site"], "config": settings,
            "epochs": final["epoch"], "completed": final["epoch"] >= spec.epochs, "final": final,
            "history": history}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def experiment_names(spec: SweepSpec, sites: dict[str, SiteData]) -> tuple[str, str]:
    """``(<spec name>-<digest>, <spec name>-baseline-<digest>)``: the same settings, priors and data give the
    same names (so a rerun resumes). The baselines depend only on the sites and the trial length, so sweeps
    that differ in their search space or scheduler share them."""
    identity = {s: [d.prior_id, d.fingerprint, d.alignment.to_dict(), d.widths, d.seed]
                for s, d in sorted(sites.items())}
    return (f"{spec.name}-{_digest({'spec': spec.to_dict() | {'path': None}, 'sites': identity})}",
            f"{spec.name}-baseline-{_digest(identity)}")


def _choices(spec: SweepSpec, sites: dict[str, SiteData], trials: list[dict], baselines: dict) -> tuple[dict, dict]:
    """Per site: the chosen setting with its numbers beside the baseline's, and the Pareto front
    (reconstruction vs alignment score) of the trials that ran to the end."""
    choices, fronts = {}, {}
    for site, data in sites.items():
        own = [t for t in trials if t["site"] == site]
        chosen = choose(own)
        if chosen is None:
            raise RuntimeError(f"sweep {spec.name}: no trial of site {site} ran to the end")
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
              name: str | None = None, trust_store_state: bool = False, tags: dict[str, str] | None = None) -> Record:
    """Run (or resume, or return the recorded) sweep, registered with ``tags``; see the module docstring."""
    started = time.perf_counter()
    registry = Registry(store)
    sites: dict[str, SiteData] = {}
    for site in spec.sites:
        prior_id = alignment_prior(registry, site.site)
        prior = registry.load_prior(prior_id)
        observations, target, target_nll = alignment_data(site, prior)
        if spec.select.metric == "nll_gap" and target_nll is None:
            raise SpecError(f"{site.path}: select.metric nll_gap needs the target's own kNN NLL, but the target "
                             "has too few rows to measure it; use metric knn_nll")
        sites[site.site] = SiteData(
            prior_id, prior, observations.values, target, target_nll, widths=site.encoder.widths, seed=site.seed,
            alignment=replace(site.alignment, steps=spec.steps, log_every=spec.epoch_steps),
            fingerprint=observations.fingerprint)
    default_name, baseline_name = experiment_names(spec, sites)
    name = validate_name(name, "sweep name") if name else default_name
    fingerprint = hashlib.sha256(json.dumps({s: d.fingerprint for s, d in sorted(sites.items())}).encode()).hexdigest()
    done = registry.find_run("sweep", name, legacy=True)
    if done:
        registry.same_run(done, fingerprint, {"experiment": default_name})
        say(f"[sweep {spec.name}] {name} is already recorded as {done.id}")
        return done

    gpu = spec.resources.gpu
    if runtime.connect(address) and gpu and runtime.available("GPU") < gpu:
        say(f"[sweep {spec.name}] resources.gpu is {gpu:g} but this local Ray has no GPU: trials run on CPUs")
        gpu = 0.0
    site_ids = [s.site for s in spec.sites]
    say(f"[sweep {spec.name}] {name}: {len(site_ids)} sites ({', '.join(site_ids)}), {spec.steps} steps "
        f"({spec.epochs} epochs) per trial, scheduler {spec.scheduler.type}")
    baselines = {}
    for result in _experiment(baseline_name, _trainable(sites, spec, gpu),
                              {"point": tune.grid_search(grid_points(spec, site_ids, {"lam": 0.0}))}, 1,
                              len(site_ids), spec, store, None, say, trust_store_state, tags or {}):
        site = settings_of(result.config)["site"]
        baselines[site] = _trial_entry(result, spec, sites[site])
        sites[site].baseline_recon = [spec.select.reconstruction(h) for h in baselines[site]["history"]]

    points = grid_points(spec, site_ids)
    space = {"point": tune.grid_search(points), **{d.field: d.to_tune() for d in spec.space if d.sampler != "grid"}}
    scheduler = PerSiteASHA(spec) if spec.scheduler.type == "asha" else None
    results = _experiment(name, _trainable(sites, spec, gpu), space, spec.samples, len(points) * spec.samples, spec,
                          store, scheduler, say, trust_store_state, tags or {})
    trials = [_trial_entry(r, spec, sites[settings_of(r.config)["site"]]) for r in results]
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
    say(f"[sweep {spec.name}] recorded {record.id}: {metrics['trials']} trials, {metrics['completed']} ran to the end, "
        f"{trial_epochs} of {metrics['full_epochs']} trial-epochs ({metrics['compute_fraction']:.0%})")
    for site, c in choices.items():
        say(f"[sweep {spec.name}] {site}: {c['mode']} lambda {c['lam']:g} lr {c['lr']:g} draws {c['draws']}  "
            f"recon {c['recon']:.4f} (lambda 0: {c['baseline_recon']:.4f})  knn_nll {c['knn_nll']:.3f}  "
            f"objective {c['objective']:.3f}"
            f"{'' if c['feasible'] else '  (no trial within the reconstruction bound)'}")
    return record
