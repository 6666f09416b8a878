"""What a sweep minimises, and how it picks a setting per site and lists the trade-off.

For one trial of a site, with ``r`` its reconstruction error, ``r_0`` the site's lambda = 0
baseline's at the same epoch, ``s`` its alignment score and ``tau`` the tolerance,

    objective = s + penalty * max(0, log(r / r_0) - log(1 + tau))

    s = knn_nll                       (metric knn_nll: the paper's kNN NLL proxy of the latents, nats)
    s = |knn_nll - target_knn_nll|    (metric nll_gap: distance to the target's own value, which
                                       does not reward latents collapsing onto the prior's modes)

so the choice -- the lowest objective among the trials that ran to the end -- is the best-aligned
setting whose reconstruction error stays within ``(1 + tau) r_0``, or the one that exceeds it
least for what it gains (``penalty`` nats per e-fold beyond the bound). The same number is what
ASHA ranks a site's trials by at every rung (forecast stopping compares the finished trials' final
objectives with a forecast score, ``pipeline.sweeps.forecast``); the penalty grows with the log of
the ratio, not the ratio, because early in training an aligned run's error can be many times the
baseline's and still end within the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import SpecError

METRICS = ("knn_nll", "nll_gap")
RECONSTRUCTIONS = {"mean": "recon", "median": "recon_median"}


@dataclass(frozen=True)
class Selection:
    """How a sweep picks each site's setting. The defaults are the measured ones (docs/measured.md, "Sweeps"):
    the plain ``knn_nll`` keeps falling as larger lambdas collapse the latents onto the prior's modes,
    and the mean reconstruction error jumps with a few wild readings."""

    metric: str = "nll_gap"
    recon_tolerance: float = 2.0  # tau: within 3x the lambda = 0 reconstruction error
    penalty: float = 10.0  # nats per e-fold of reconstruction error beyond the bound
    recon: str = "median"  # median or mean over the evaluation rows (a few wild readings dominate the mean)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SpecError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.recon not in RECONSTRUCTIONS:
            raise SpecError(f"recon must be one of {', '.join(RECONSTRUCTIONS)}, got {self.recon!r}")
        if not (math.isfinite(self.recon_tolerance) and self.recon_tolerance >= 0):
            raise SpecError(f"recon_tolerance must be a finite number >= 0, got {self.recon_tolerance!r}")
        if not (math.isfinite(self.penalty) and self.penalty > 0):
            raise SpecError(f"penalty must be a finite number > 0, got {self.penalty!r}")

    def reconstruction(self, metrics: dict) -> float:
        return metrics[RECONSTRUCTIONS[self.recon]]

    def score(self, metrics: dict, target_nll: float | None) -> float:
        if self.metric == "knn_nll":
            return metrics["knn_nll"]
        if target_nll is None:
            raise SpecError("metric nll_gap needs the target's own kNN NLL, which needs more target rows")
        return abs(metrics["knn_nll"] - target_nll)

    def objective(self, metrics: dict, baseline_recon: float, target_nll: float | None) -> float:
        """See the module docstring; ``metrics`` holds ``recon`` / ``recon_median`` and ``knn_nll``."""
        excess = math.log(self.reconstruction(metrics) / baseline_recon) - math.log1p(self.recon_tolerance)
        return self.score(metrics, target_nll) + self.penalty * max(0.0, excess)

    def feasible(self, metrics: dict, baseline_recon: float) -> bool:
        return self.reconstruction(metrics) <= (1 + self.recon_tolerance) * baseline_recon

    def to_dict(self) -> dict:
        return {"metric": self.metric, "recon_tolerance": self.recon_tolerance, "penalty": self.penalty,
                "recon": self.recon}


def choose(trials: list[dict]) -> dict | None:
    """The trial with the lowest final ``objective`` among those that ``completed`` (ties: smaller lambda)."""
    done = [t for t in trials if t["completed"]]
    return min(done, key=lambda t: (t["final"]["objective"], t["config"]["lam"])) if done else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (reconstruction, score), both minimised, that no other point dominates
    (as good in both and better in one), in order of increasing reconstruction."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best_score = [], math.inf
    for i in order:
        if points[i][1] < best_score:
            front.append(i)
            best_score = points[i][1]
    return front
