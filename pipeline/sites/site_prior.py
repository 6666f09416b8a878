"""A site prior from the core prior: fine-tuned from its weights, or refit from scratch.

Both live in the core prior's space (its projection and normaliser are kept), so a site
prior's held-out FM loss compares with the core's and a refit's, and a site's encoder can move
between them without changing dimension or scale. ``finetune`` starts from the core's (EMA)
weights with a small learning rate and a short warm-up, either every weight (``full``) or an adapter of
the frozen core (``adapter``, :mod:`pipeline.method.adapter`: the site prior is saved as the adapter alone);
``refit`` draws fresh weights and uses the core fit's learning rate. Both log the held-out FM loss
(``metrics.heldout_fm``) at every log. A training whose logged FM loss (training or held-out) is not
finite has diverged: it is a ``DataError`` naming the setting to change, and no prior is returned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable

import torch

from pipeline.errors import DataError, SpecError
from pipeline.method.adapter import adapter_tensors, attach, merge
from pipeline.method.configs import AdapterConfig, FitConfig
from pipeline.method.metrics import heldout_fm
from pipeline.method.prior import Adapter, FlowPrior
from pipeline.method.training import fit_velocity
from pipeline.method.velocity import VelocityMLP
from pipeline.sites.spec import SITE_PRIOR_MODES

TARGET_REMEDY = ("check the site's target data in the site spec (target.uri, target.filters, columns) for other "
                 "units or extreme values")
REMEDIES = {  # what a diverged site prior's error says to change, per mode
    "finetune": "lower finetune.lr in the site spec",
    "refit": (f"a refit trains at the core fit's lr (finetune.lr applies to fine-tunes only): {TARGET_REMEDY}, or "
              "fine-tune instead (`flowprior site finetune --mode finetune`) with a lower finetune.lr"),
}


def site_fit_config(core: FlowPrior, mode: str, steps: int, lr: float, batch_size: int, log_every: int,
                    precision: str = "fp32") -> FitConfig:
    """The optimiser settings of a site prior: the core's, with the site's steps (and lr for a finetune)
    and its own ``precision`` and one t per sample (not the core's: a core fitted in bf16 on GPUs may be
    fine-tuned on a CPU)."""
    if mode not in SITE_PRIOR_MODES:
        raise SpecError(f"unknown mode {mode!r}; choose one of {', '.join(SITE_PRIOR_MODES)}")
    base = replace(FitConfig(**core.info["fit"]) if "fit" in core.info else FitConfig(), precision=precision, t_group=1)
    if mode == "finetune":
        return replace(base, steps=steps, lr=lr, warmup=min(50, steps // 10), batch_size=batch_size,
                       log_every=log_every)
    return replace(base, steps=steps, warmup=min(base.warmup, steps // 10), batch_size=batch_size,
                   log_every=log_every)


def train_site_prior(
    core: FlowPrior,
    z_train: torch.Tensor,
    z_heldout: torch.Tensor,
    mode: str,
    fit: FitConfig,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    *,
    adapter: AdapterConfig | None = None,
    label: str | None = None,
    remedy: str | None = None,
) -> FlowPrior:
    """Train on the site's points in core prior space ``z_train`` (n, d1); ``z_heldout`` (m, d1) is
    only evaluated. Trains on ``z_train``'s device (move ``core`` there too). Returns the site prior
    (EMA weights) with its history in ``info``; a ``finetune`` with ``adapter`` settings trains only an
    adapter of the frozen core, and the prior holds it (``prior.adapter``) beside its merged network.

    A ``DataError`` instead, at the first log that shows it diverged (:func:`require_converged`): its
    message calls the training ``label`` (default: the mode) and says to ``remedy`` (default:
    ``REMEDIES[mode]``)."""
    if mode == "finetune" and adapter is not None:
        model = attach(core.velocity, adapter, seed).train()
    elif mode == "finetune":
        model = copy.deepcopy(core.velocity).requires_grad_(True).train()
    elif mode == "refit":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VelocityMLP(core.velocity.config)
    else:
        raise SpecError(f"unknown mode {mode!r}; choose one of {', '.join(SITE_PRIOR_MODES)}")
    model = model.to(z_train.device)

    def watched(entry: dict) -> None:  # stop at the first log that diverged, not after the remaining steps
        require_converged(entry, fit, label or f"the {mode}", remedy or REMEDIES[mode])
        if progress is not None:
            progress(entry)

    ema, history = fit_velocity(model, z_train, fit, seed=seed, progress=watched,
                                evaluate=lambda m: {"heldout_fm": heldout_fm(m, z_heldout, seed)})
    method = "adapter" if mode == "finetune" and adapter is not None else "full"
    info = {**core.info, "fit": fit.to_dict(), "history": history, "mode": mode, "method": method}
    if method == "full":
        return FlowPrior(ema, core.space, info)
    return FlowPrior(merge(ema), core.space, {**info, "adapter": adapter.to_dict()},
                     Adapter(adapter, adapter_tensors(ema)))


def require_converged(entry: dict, fit: FitConfig, label: str, remedy: str) -> None:
    """A ``DataError`` if the training or held-out FM loss of the log ``entry`` (one of a fit's history) is
    not finite: ``<label> diverged (...): <remedy>``, starting in lower case (a caller prefixes the site)."""
    for key, name in (("train_fm", "training"), ("heldout_fm", "held-out")):
        value = entry.get(key)
        if value is not None and not math.isfinite(value):
            raise DataError(f"{label} diverged ({name} FM loss {value} at step {entry['step']} of {fit.steps}, "
                            f"lr {fit.lr:g}): {remedy}")
