"""Can a site reuse the core prior, or should it fine-tune or refit? Measured, then decided.

All numbers live in the core prior's space, on the site's held-out target points ``z`` (n, d1),
each next to the same quantity on the core's own held-out points (recorded when it was fitted):

* ``fm_ratio = L_FM(site) / L_FM(core held-out)``: how much worse the velocity field predicts the
  site's straight paths than its own data's (same protocol, ``metrics.heldout_fm``).
* ``nll_gap = NLL_kNN(site) - NLL_kNN(core held-out)`` (nats per point): the kNN NLL proxy of the
  points under ``n`` prior samples (``knn_nll(points, samples)``), so > 0 means the site sits where
  the prior puts less mass. Both sides use the same number of samples.
* ``mmd``: multi-scale MMD^2 between prior samples and the site's points (reported; a single site
  is a part of the pool, so a non-zero MMD alone does not mean the prior is wrong for it).

Decision: ``refit`` when ``fm_ratio > refit_fm`` (the field is so far off that a fine-tune
within its budget no longer gets within 5% of a prior trained from scratch); else ``finetune``
when ``fm_ratio > finetune_fm`` or ``nll_gap > finetune_nll``; else ``reuse`` (the core prior
is within ~5% of what a site-specific prior reaches). The defaults are read off
``benchmarks/site_decisions.py`` on the wind-farm data (README, "Measured"): every site near
the core distribution had ``fm_ratio <= 1.10`` and ``nll_gap <= 0.71`` and reusing the core
came within 3-5% of a refit; an unrelated site (ratio 1.81, gap 3.4 nats) and sites moved 3 and
4.5 sd (ratios 14.6, 28.5) needed a fine-tune, which got within 5% of the refit with 13-25% of
its steps; at 6 sd (ratio 48) the fine-tune's 1,000 steps no longer did. A site spec can
override them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from pipeline.method.metrics import heldout_fm, knn_nll, mmd
from pipeline.method.ode import Solver
from pipeline.method.prior import FlowPrior

DECISIONS = ("reuse", "finetune", "refit")


@dataclass(frozen=True)
class Thresholds:
    """When a site stops reusing the core prior (see the module docstring)."""

    finetune_fm: float = 1.15
    finetune_nll: float = 1.0
    refit_fm: float = 35.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"threshold {name} must be a finite number, got {value!r}")
        if self.finetune_fm <= 0:
            raise ValueError(f"threshold finetune_fm must be > 0 (a ratio), got {self.finetune_fm}")
        if self.refit_fm < self.finetune_fm:
            raise ValueError(f"threshold refit_fm ({self.refit_fm}) must be >= finetune_fm ({self.finetune_fm})")

    def to_dict(self) -> dict:
        return asdict(self)


def measure(prior: FlowPrior, z: torch.Tensor, core_fm: float, core_nll: float, samples: int,
            seed: int = 0) -> dict:
    """The decision's numbers for site points ``z`` (n, d1) in ``prior``'s space, against the core's
    held-out ``core_fm`` and ``core_nll`` measured with ``samples`` prior samples."""
    fm = heldout_fm(prior.velocity, z, seed)
    drawn = prior.sample(samples, Solver(method="euler", steps=50),  # as the fit's own evaluation
                         generator=torch.Generator().manual_seed(seed))  # (samples, d1)
    nll = knn_nll(z, drawn).mean().item()
    return {"fm_site": fm, "fm_core": core_fm, "fm_ratio": fm / core_fm, "nll_site": nll,
            "nll_core": core_nll, "nll_gap": nll - core_nll, "mmd": mmd(drawn, z), "points": len(z),
            "samples": samples}


def decide(metrics: dict, thresholds: Thresholds = Thresholds()) -> str:
    """``reuse``, ``finetune`` or ``refit`` from :func:`measure`'s numbers."""
    if metrics["fm_ratio"] > thresholds.refit_fm:
        return "refit"
    if metrics["fm_ratio"] > thresholds.finetune_fm or metrics["nll_gap"] > thresholds.finetune_nll:
        return "finetune"
    return "reuse"
