"""Can a site reuse the core prior, or should it fine-tune or refit? Measured, then decided.

The site lead's question is whether a site prior would explain the site's data better than the core
does. The check answers it by trying: a **probe**, a short fine-tune of the core on the site's
training points (``probe_steps``, 10% of a fine-tune's default budget) trained the way the site's fine-tune
will be (``finetune.method``: an adapter of the frozen core by default, so the decision predicts what that
fine-tune gains; on the wind-farm sites both probes decide alike, ``benchmarks/site_adapters.py``), and the
gain it brings on the held-out points,

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

import torch

from pipeline.errors import DataError
from pipeline.method.configs import AdapterConfig
from pipeline.method.metrics import heldout_fm, knn_nll, mmd
from pipeline.method.ode import Solver
from pipeline.method.prior import FlowPrior
from pipeline.sites.site_prior import TARGET_REMEDY, site_fit_config, train_site_prior
from pipeline.sites.spec import Thresholds

MIN_CHECK_POINTS = 20  # held-out target points below which a site check refuses to decide
PROBE_REMEDY = "lower finetune.lr or finetune.probe_steps in the site spec"  # what a diverging probe says to change
CORE_REMEDY = "refit the core prior with `flowprior prior fit`, or check against another prior with --prior"
CAUSES = {  # each number of a check, in the order they are computed: what it comes from, and what to change
    "fm_core": f"the core prior's record holds no finite held-out FM loss (heldout_fm); {CORE_REMEDY}",
    "nll_core": f"the core prior's record holds no finite kNN NLL proxy (heldout_nll_proxy); {CORE_REMEDY}",
    "fm_site": f"the core prior's field gives no finite FM loss on the site's held-out points; {TARGET_REMEDY}",
    "fm_ratio": f"the site's held-out FM loss over the core's is not finite; {TARGET_REMEDY}",
    "nll_site": f"the kNN NLL proxy of the site's points under the core prior's samples is not finite; {TARGET_REMEDY}",
    "nll_gap": f"the kNN NLL proxy of the site's points under the core prior's samples is not finite; {TARGET_REMEDY}",
    "mmd": f"the MMD between the core prior's samples and the site's points is not finite; {TARGET_REMEDY}",
    "fm_probe": f"the probe fine-tune diverged; {PROBE_REMEDY}",
    "probe_gain": f"the probe fine-tune diverged; {PROBE_REMEDY}",
}
DECIDING = ("fm_ratio", "probe_gain")  # the numbers the rule reads: a check without them decides nothing


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


def probe_finetune(core: FlowPrior, z_train: torch.Tensor, z: torch.Tensor, steps: int, lr: float,
                   batch_size: int, seed: int = 0, adapter: AdapterConfig | None = None) -> dict:
    """Fine-tune ``core`` for ``steps`` on the site's training points ``z_train`` (n, d1), the way the site's
    fine-tune would (an ``adapter``, or every weight); its held-out FM on ``z`` (m, d1) against the core's, with
    the same noise: ``probe_gain`` (module docstring)."""
    fit = site_fit_config(core, "finetune", steps, lr, batch_size, log_every=steps)
    probed = train_site_prior(core, z_train, z, "finetune", fit, seed=seed, adapter=adapter,
                              label=f"the {steps}-step probe fine-tune", remedy=PROBE_REMEDY)
    fm_core, fm_probe = heldout_fm(core.velocity, z, seed), probed.info["history"][-1]["heldout_fm"]
    return {"fm_probe": fm_probe, "probe_gain": 1 - fm_probe / fm_core, "probe_steps": steps}


def require_finite(numbers: dict) -> None:
    """A ``DataError`` for the first of a check's ``numbers`` (:func:`measure`'s and :func:`probe_finetune`'s) that
    is missing (the ones the rule reads), None, NaN or infinite, saying what it comes from and which
    setting to change. Its message starts in lower case: a caller prefixes the site."""
    missing = [name for name in DECIDING if name not in numbers]
    if missing:
        raise DataError(f"{missing[0]} is missing from the check's numbers, so no decision was made")
    order = {name: i for i, name in enumerate(CAUSES)}  # a cause before what it causes: fm_probe, then probe_gain
    for name in sorted(numbers, key=lambda n: order.get(n, len(order))):
        value = numbers[name]
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            continue  # not a number (a label, a flag): nothing to hold to finiteness
        if value is None or not math.isfinite(value):
            cause = CAUSES.get(name, "it is one of the check's numbers")
            raise DataError(f"{name} is {'missing' if value is None else value}, not a finite number, so no decision "
                            f"was made: {cause}")


def decide(metrics: dict, thresholds: Thresholds = Thresholds()) -> str:
    """``reuse``, ``finetune`` or ``refit`` from :func:`measure`'s and :func:`probe_finetune`'s numbers; a
    ``DataError`` (:func:`require_finite`) instead of a decision where any of them is not a finite number."""
    require_finite(metrics)
    if metrics["fm_ratio"] > thresholds.refit_fm:
        return "refit"
    if metrics["probe_gain"] > thresholds.finetune_gain:
        return "finetune"
    return "reuse"
