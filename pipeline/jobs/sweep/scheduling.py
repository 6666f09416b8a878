"""Which trials a sweep runs, in what order, and which it stops early."""

from __future__ import annotations

import itertools
import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pipeline.jobs.sweep.trial import SiteData, settings_of
from pipeline.sweeps import SweepSpec
from pipeline.sweeps.forecast import ForecastStop


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


class PerSiteForecast(FIFOScheduler):
    """Tune's side of :class:`~pipeline.sweeps.forecast.ForecastStop`: one rule per site, fed each trial's kNN NLL
    proxy per epoch and, when it runs to the end, its final objective. A free slot goes to a site with no trial
    running where there is one: a site's next trial is then forecast from every trial of the site before it,
    as the rule is measured (a trial that starts beside its site's first one has nothing to be forecast from
    until that one ends)."""

    def __init__(self, spec: SweepSpec, targets: dict[str, float | None]) -> None:
        """``targets``: each site's target kNN NLL (``SiteData.target_nll``)."""
        super().__init__()
        self.rules = {site: ForecastStop(spec.select, target, spec.epochs, spec.scheduler.grace_epochs)
                      for site, target in targets.items()}
        self.curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> its kNN NLL (Tune repeats a last result)

    def _rule(self, trial) -> ForecastStop:
        return self.rules[settings_of(trial.config)["site"]]

    def choose_trial_to_run(self, controller):
        """In the grid's order, the first pending trial of a site with no trial running, else of a site with a
        finished trial, else the first pending one: a slot is not left idle."""
        trials = controller.get_trials()
        pending = [t for t in trials if t.status == Trial.PENDING]
        running = {settings_of(t.config)["site"] for t in trials if t.status == Trial.RUNNING}
        ready = [t for t in pending if settings_of(t.config)["site"] not in running]
        return next(iter(ready or [t for t in pending if self._rule(t).finished]), None) \
            or super().choose_trial_to_run(controller)

    def on_trial_result(self, controller, trial, result: dict) -> str:
        self.curves.setdefault(trial.trial_id, {})[result["epoch"]] = result["knn_nll"]
        return self.STOP if self._rule(trial).stops(result["knn_nll"], result["epoch"]) else self.CONTINUE

    def on_trial_complete(self, controller, trial, result: dict) -> None:
        curve = self.curves.pop(trial.trial_id, {})
        rule = self._rule(trial)
        if result and "objective" in result:  # a resumed trial's curve lacks its earlier epochs: finish() skips it
            rule.finish([curve.get(epoch, math.nan) for epoch in range(1, rule.epochs + 1)], result["objective"])

    def on_trial_remove(self, controller, trial) -> None:
        self.curves.pop(trial.trial_id, None)

    def on_trial_error(self, controller, trial) -> None:
        self.curves.pop(trial.trial_id, None)


def scheduler_of(spec: SweepSpec, sites: dict[str, SiteData]) -> FIFOScheduler | None:
    """The trials' scheduler: per-site ASHA or forecast stopping, or none (FIFO: every trial runs to the end)."""
    if spec.scheduler.type == "asha":
        return PerSiteASHA(spec)
    if spec.scheduler.type == "forecast":
        return PerSiteForecast(spec, {site: data.target_nll for site, data in sites.items()})
    return None
