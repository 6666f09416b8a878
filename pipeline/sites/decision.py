"""Can a site reuse the core prior, or should it fine-tune or refit? Measured, then decided.

The site lead's question is whether a site prior would explain the site's data better than the core
does. The check answers it by trying: a **probe**, a short fine-tune of the core on the site's
training points (``probe_steps``, 10% of a fine-tune's default budget), and the gain it brings on
the held-out points,

* ``probe_gain = 1 - L_FM(probe) / L_FM(core)`` on the site's held-out points, same noise for both.

The probe is two-sided by construction: a fine-tune gains where the core misses the site's mass
(a shifted or derated site) *and* where the core spends mass the site does not have (one climate,
product line or wind regime of a diverse pool: the site's own field routes noise to its modes
only). The one-sided numbers below miss the second case; they are kept as diagnostics.
All numbers live in the core prior's space, on the site's held-out target points ``z`` (n, d1):

* ``fm_ratio = L_FM(site) / L_FM(core held-out)``: how much worse the velocity field predicts the
  site's straight paths than its own data's (same protocol, ``metrics.heldout_fm``).
* ``nll_gap = NLL_kNN(site) - NLL_kNN(core held-out)`` (nats per point): the kNN NLL proxy of the
  points under ``n`` prior samples, so > 0 means the site sits where the prior puts less mass.
* ``mmd``: multi-scale MMD^2 between prior samples and the site's points.

Decision: ``refit`` when ``fm_ratio > refit_fm`` (the field is so far off that a fine-tune within
its budget no longer gets within 5% of a prior trained from scratch); else ``finetune`` when
``probe_gain > finetune_gain``; else ``reuse``. The defaults are read off
``benchmarks/site_decisions.py`` on the wind-farm data (docs/measured.md), where the rule is held
to: ``reuse`` wherever reusing the core is within 3% of a site prior's held-out FM on the site,
never ``reuse`` where it is 5% or more worse. A site spec can override them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from pipeline.errors import SpecError
from pipeline.method.metrics import heldout_fm, knn_nll, mmd
from pipeline.method.ode import Solver
from pipeline.method.prior import FlowPrior
from pipeline.sites.site_prior import site_fit_config, train_site_prior

DECISIONS = ("reuse", "finetune", "refit")


MIN_CHECK_POINTS = 20  # held-out target points below which a site check refuses to decide


@dataclass(frozen=True)
class Thresholds:
    """When a site stops reusing the core prior: `refit` when `fm_ratio > refit_fm`, else `finetune` when
    a probe fine-tune gains more than `finetune_gain` of the held-out FM loss, else `reuse`
    (``pipeline.sites.decision``; the defaults are measured by ``benchmarks/site_decisions.py``)."""

    finetune_gain: float = 0.03
    refit_fm: float = 35.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SpecError(f"threshold {name} must be a finite number, got {value!r}")
        if not 0 <= self.finetune_gain < 1:
            raise SpecError(f"threshold finetune_gain is a fraction of the held-out FM loss, in [0, 1); "
                             f"got {self.finetune_gain}")
        if self.refit_fm <= 1:
            raise SpecError(f"threshold refit_fm must be > 1 (a ratio), got {self.refit_fm}")

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


def probe(core: FlowPrior, z_train: torch.Tensor, z: torch.Tensor, steps: int, lr: float, batch_size: int,
          seed: int = 0) -> dict:
    """Fine-tune ``core`` for ``steps`` on the site's training points ``z_train`` (n, d1); its held-out FM
    on ``z`` (m, d1) against the core's, with the same noise: ``probe_gain`` (module docstring)."""
    fit = site_fit_config(core, "finetune", steps, lr, batch_size, log_every=steps)
    probed = train_site_prior(core, z_train, z, "finetune", fit, seed=seed)
    fm_core, fm_probe = heldout_fm(core.velocity, z, seed), probed.info["history"][-1]["heldout_fm"]
    return {"fm_probe": fm_probe, "probe_gain": 1 - fm_probe / fm_core, "probe_steps": steps}


def decide(metrics: dict, thresholds: Thresholds = Thresholds()) -> str:
    """``reuse``, ``finetune`` or ``refit`` from :func:`measure`'s and :func:`probe`'s numbers."""
    if metrics["fm_ratio"] > thresholds.refit_fm:
        return "refit"
    if metrics["probe_gain"] > thresholds.finetune_gain:
        return "finetune"
    return "reuse"
