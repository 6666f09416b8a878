"""Which trials a sweep runs, in what order, and which it stops early."""

from __future__ import annotations

import itertools

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pipeline.jobs.sweep.trial import settings_of
from pipeline.sweeps import SweepSpec


def grid_points(spec: SweepSpec, sites: list[str], fixed: dict | None = None) -> list[dict]:
    """Every combination of the grid dimensions in the order the spec lists their values (the first
    dimension slowest), each for every site in turn: trials start in this order, so each site's trials
    run mostly one after another and its first ones span the grid (list values coarse-to-fine). With
    ``fixed`` (the baselines' ``{"lam": 0.0}``): one point per site with those settings."""
    grids = [d for d in spec.space if d.sampler == "grid"] if fixed is None else []
    combos = itertools.product(*[d.values for d in grids])
    return [{**(fixed or {}), **dict(zip([d.field for d in grids], combo, strict=True)), "site": site}
            for combo in combos for site in sites]


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


def scheduler_of(spec: SweepSpec) -> PerSiteASHA | None:
    """The trials' scheduler: per-site ASHA, or none (FIFO: every trial runs to the end)."""
    return PerSiteASHA(spec) if spec.scheduler.type == "asha" else None
