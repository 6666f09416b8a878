"""Early stopping by forecast: a trial stops once its forecast final score is worse than the site's best finished trial.

Why not ASHA's rule. ASHA ranks a site's trials at a rung by their objective there, as if the ranking at
epoch e were the ranking at the end. With ``nll_gap`` it is not: the score ``|y - y*|`` (``y`` the latents'
kNN NLL proxy, ``y*`` the target's own) folds at the target, and the lambdas that approach it fastest look
best early, then pass it and keep falling as their latents collapse onto the prior's modes (measured on the
wind farm: docs/measured.md, "Sweeps: early stopping against the full grid").

The forecast. A site's trials share the site, the prior and the schedule (the same steps, the same cosine
learning rate); they differ in their settings. So how far a trial's ``y`` still falls after epoch e is read
off the site's finished trials ``c`` that were near the same ``y`` at epoch e. With ``T`` the last epoch,

    delta(y) = piecewise-linear interpolation of the points (y_c(e), y_c(T) - y_c(e)) over the finished c
               (constant beyond the outermost points; one finished trial: its change)
    y_hat(T) = y(e) + delta(y(e))

and, the reconstruction penalty being >= 0, the trial's final objective is forecast to be at least
``s(y_hat(T))`` (``s`` the selection's score: ``|y - y*|`` or ``y``). The rule: at every epoch
``e >= grace_epochs`` before the last, stop the trial if ``s(y_hat(T)) >`` the lowest final objective among
the site's finished trials. Until a trial of the site has finished, nothing stops.

What it cannot save: a trial forecast to beat every finished one runs to the end, so in the order trials
start, each new best costs a whole trial. On the wind farm's grid that floor alone -- a rule that knew every
final objective at epoch 1 and stopped every other trial there -- costs a median 35% of the grid's
trial-epochs over random orders (``benchmarks/sweep_early_stopping.py`` prints it beside the rules).

Where it errs: the forecast is off by 0.2-2 nats at early epochs, so where a site's best settings all end
within that of the target, or one setting's curve flattens at once while its neighbours keep falling, it can
stop the eventual winner (on held-out turbines: every site within 5% of the grid's best in 30% of random
orders, against ASHA's 6%; docs/measured.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.sweeps.objective import Selection


def forecast_final(y: float, epoch: int, finished: list[list[float]]) -> float:
    """``y_hat(T)`` of the module docstring: the final kNN NLL forecast for a trial at ``y`` after ``epoch``
    (1-based), from the finished trials' curves (``y`` per epoch, the last one final)."""
    points = sorted((curve[epoch - 1], curve[-1] - curve[epoch - 1]) for curve in finished)
    at, change = zip(*points, strict=True)
    return y + float(np.interp(y, at, change))


@dataclass
class ForecastStop:
    """One site's forecast stopping rule (module docstring); ``target_nll`` is ``y*`` (``None`` for ``knn_nll``)."""

    selection: Selection
    target_nll: float | None
    epochs: int
    grace_epochs: int = 1
    finished: list[list[float]] = field(default_factory=list)  # the finished trials' y per epoch
    best: float = math.inf  # the lowest final objective among them

    def finish(self, curve: list[float], objective: float) -> None:
        """A trial of the site ran to the end with these ``y`` per epoch and this final objective (a curve that
        lacks epochs, as a resumed trial's does, is left out)."""
        if len(curve) == self.epochs and all(map(math.isfinite, curve)):
            self.finished.append(list(curve))
            self.best = min(self.best, objective)

    def forecast_score(self, y: float, epoch: int) -> float:
        """``s(y_hat(T))``: a lower bound on the final objective of a trial at ``y`` after ``epoch``."""
        return self.selection.score({"knn_nll": forecast_final(y, epoch, self.finished)}, self.target_nll)

    def stops(self, y: float, epoch: int) -> bool:
        """Whether a trial at ``y`` after ``epoch`` stops: its forecast score exceeds the best finished objective."""
        if not self.finished or epoch < self.grace_epochs or epoch >= self.epochs:
            return False
        return self.forecast_score(y, epoch) > self.best
