"""One Tune experiment of a sweep under the store: started; or, if it ran to its end before, its trials read
from the JSON it left (:mod:`.finished`, no Tune, no pickles); or resumed if it was interrupted (only when
its pickled state is trusted); with a progress line per trial that ends.

Tune's own output: the ``flowprior`` command runs with ``RAY_AIR_NEW_OUTPUT=0`` (with ``verbose=0``,
no tables: the progress lines below are the output) and without Tune's warning about frequent state
snapshots (trials checkpoint every epoch and the snapshots are what resuming needs); see
``pipeline.cli.TUNE_ENV``. A program that calls :func:`run_experiment` keeps its own environment.
"""

from __future__ import annotations

import contextvars
import math
import time

from ray import tune

from pipeline.errors import TrainingError, UntrustedState
from pipeline.jobs import runtime
from pipeline.jobs.sweep import finished
from pipeline.jobs.sweep.finished import EndedTrial
from pipeline.jobs.sweep.trial import HISTORY_KEYS, settings_of
from pipeline.progress import Say, duration
from pipeline.storage import Store
from pipeline.sweeps import SweepSpec
from pipeline.sweeps.spec import SWEPT
from pipeline.tracking import TAG, Tracking

# Where the running experiment's progress lines go. Tune pickles its callbacks with the experiment (and a
# resumed run unpickles them), so the output function cannot be part of one: run_experiment sets it for
# the length of its run, in its own context.
_SAY: contextvars.ContextVar[Say] = contextvars.ContextVar("sweep_say", default=print)


class SweepInterrupted(RuntimeError):
    """The Tune experiment stopped before every trial ended (Ctrl+C); rerunning the same command resumes it."""


class TrialLines(tune.Callback):
    """One line per trial that ends, with what it reached and the running count."""

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
        _SAY.get()(f"[{self.label}] {self.ended}/{self.total} trials, {duration(elapsed)}{eta}: {c['site']} "
                   f"{settings}: {how}  recon {r.get('recon', math.nan):.4f}  knn_nll {r.get('knn_nll', math.nan):.3f}"
                   f"{objective}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        site = settings_of(trial.config)["site"]
        _SAY.get()(f"[{self.label}] trial {trial.trial_id} ({site}) failed; see {trial.path}")


def _trial_folder(trial) -> str:
    return f"{settings_of(trial.config)['site']}-{trial.trial_id}"


def run_experiment(name: str, trainable, param_space: dict, samples: int, total: int, spec: SweepSpec,
                   store: Store, scheduler, say: Say, trust_store_state: bool,
                   tags: dict[str, str], reuse_actors: bool = True) -> list[EndedTrial]:
    """The ended trials of the Tune experiment ``name`` under the store: read back if it ran to its end before,
    else run, or resumed if it was interrupted. With MLflow tracking on, each trial is also an MLflow run
    tagged with ``tags`` (a resumed experiment keeps the callbacks it started with).

    ``reuse_actors``: a trial starts in the worker process of a trial that ended (Tune resets the function
    trainable there), not in a new one that imports torch again: 0.42 s a trial outside training instead of
    3.97 s on 2 cores (``benchmarks/sweep_scale.py``). A trial's results do not depend on it: its training is
    seeded and set up from its own settings and site data, and its threads are set where it starts."""
    storage_path, filesystem = runtime.storage_for(store)
    path = f"{storage_path}/{name}"
    ended_before = finished.load(store, name)
    if ended_before is not None:
        say(f"[sweep {spec.name}] {name} ran to its end before: reusing its {len(ended_before)} trials "
            f"({store.uri_of(finished.key_of(name))})")
        return ended_before
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        if not trust_store_state:
            raise UntrustedState(
                f"sweep {spec.name}: the Tune experiment {path} exists and did not finish (interrupted, or left by a "
                "flowprior that did not record finished experiments). Resuming it unpickles its state, which runs "
                "code from the store on this driver: rerun with --trust-store-state if only trusted jobs can write "
                "there, or pass another --name to start over")
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
                                        trial_dirname_creator=_trial_folder,
                                        reuse_actors=reuse_actors),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem, verbose=0,
                                      callbacks=[TrialLines(f"sweep {name}", total, spec.epochs), *mlflow],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = contextvars.copy_context().run(_fit, tuner, say)
    if grid.errors:
        raise TrainingError(f"sweep {spec.name}: {len(grid.errors)} trial(s) of {name} failed; the first: "
                           f"{grid.errors[0]}") from grid.errors[0]
    # after Ctrl+C Tune reports every trial as terminated; the state it saved says which were not
    saved = tune.ExperimentAnalysis(path, storage_filesystem=filesystem).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if ended < len(saved):
        raise SweepInterrupted(f"sweep {spec.name}: interrupted with {ended} of {len(saved)} trials of {name} "
                               f"ended; rerun the same command to resume ({path})")
    trials = [EndedTrial.of(result, HISTORY_KEYS) for result in grid]
    finished.save(store, name, trials)  # from now on a sweep that needs this experiment reads it, unpickling nothing
    return trials


def _fit(tuner: tune.Tuner, say: Say):
    """``tuner.fit()`` with the progress lines going to ``say`` (in a copied context: nothing outside changes)."""
    _SAY.set(say)
    return tuner.fit()
