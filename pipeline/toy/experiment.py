"""The toy experiment: fit a prior on a 2-D target, then optimise 1,000 free latents against it.

Two ways to optimise the latents, reported side by side:

* ``align`` (the paper): latents ``y`` minimise ``L_align(y)`` with Adam (mode seeking);
* ``match`` (ours): the latents move together along the velocity difference between an auxiliary
  flow fitted online to them and the prior (:mod:`pipeline.method.matching`), so their
  distribution becomes the prior's.

Everything is measured against the target's exact density, mapped to prior space
(``log p_Y(y) = log p_X(x) + sum log scale`` for ``y = (x - mean) / scale``), and next to the
prior's own samples: latents can match only the prior they are given.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch
from scipy.stats import spearmanr

from pipeline.method import metrics
from pipeline.method.configs import FitConfig, MatchConfig
from pipeline.method.matching import AuxiliaryFlow, matching_loss
from pipeline.method.prior import FlowPrior
from pipeline.progress import Say
from pipeline.toy.config import ToyConfig
from pipeline.toy.targets import Target, get_target


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


class ToyRun:
    """State shared by the steps of one run: the target, its prior and the true NLL in prior space."""

    def __init__(self, config: ToyConfig, progress: Say) -> None:
        self.config, self.progress = config, progress
        self.target: Target = get_target(config.distribution)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.prior: FlowPrior | None = None

    def true_nll(self, y: torch.Tensor) -> torch.Tensor:
        """``-log p_Y(y)`` under the target mapped to prior space: ``(n, 2) -> (n,)``."""
        space = self.prior.space
        x = y.detach().double() * space.scale.double() + space.mean.double()  # projection is the identity here
        return -(self.target.log_prob(x) + space.scale.double().log().sum())

    def fit_prior(self) -> dict:
        c = self.config
        x = self.target.sample(c.n_train, self.generator)
        fit = FitConfig(steps=c.fit_steps, lr=c.fit_lr, log_every=max(1, c.fit_steps // 8))
        start = time.perf_counter()
        self.prior = FlowPrior.fit(
            x, width=c.width, depth=c.depth, fit=fit, seed=c.seed,
            progress=lambda r: self.progress(f"  prior step {r['step']:>6}/{c.fit_steps}  FM loss {r['train_fm']:.4f}"),
        )
        z_eval = self.prior.to_prior(self.target.sample(c.n_eval, self.generator))
        heldout = self.prior.flow_matching_loss(z_eval, draws=8, generator=self.generator).item()
        return {"fit_seconds": time.perf_counter() - start, "heldout_fm": heldout}

    def landscape(self, lo: float, hi: float) -> dict:
        """``L_align`` and true NLL on a ``grid x grid`` lattice of prior space."""
        c = self.config
        ticks = torch.linspace(lo, hi, c.grid)
        points = torch.cartesian_prod(ticks, ticks)  # (G*G, 2), x-major
        with torch.no_grad():
            loss = torch.cat([self.prior.alignment_loss(chunk, draws=c.landscape_draws, generator=self.generator)
                              for chunk in points.split(1024)])
        nll = self.true_nll(points)
        return {"ticks": ticks, "points": points, "align": loss, "nll": nll,
                "spearman": _spearman(loss, nll)}

    def checkpoints(self) -> list[int]:
        """Steps at which the curves are recorded: 0 and ~40 geometrically spaced steps up to the end
        (optimisation curves change on a log scale; uniform spacing would weigh the flat tail)."""
        n = self.config.align_steps
        return sorted({0, n, *(int(round(n ** (i / 40))) for i in range(41))})

    def _optimise(self, params: list[torch.Tensor], loss_fn: Callable[[int], torch.Tensor],
                  latents_fn: Callable[[], torch.Tensor], label: str) -> list[dict]:
        """Adam with cosine decay on ``params``; the latents' mean ``L_align`` and true NLL at checkpoints."""
        c = self.config
        optimiser = torch.optim.Adam(params, lr=c.align_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, c.align_steps)
        checkpoints, curve = set(self.checkpoints()), []
        for step in range(c.align_steps + 1):
            if step in checkpoints:
                y = latents_fn()
                with torch.no_grad():
                    align = self.prior.alignment_loss(y, draws=c.draws, generator=self.generator).mean().item()
                curve.append({"step": step, "align": align, "nll": self.true_nll(y).mean().item()})
            if step % max(1, c.align_steps // 4) == 0:
                self.progress(f"  {label} step {step:>5}/{c.align_steps}  L_align {curve[-1]['align']:.4f}  "
                              f"true NLL {curve[-1]['nll']:.3f}")
            if step == c.align_steps:
                break
            loss = loss_fn(step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        return curve

    def align(self) -> tuple[torch.Tensor, list[dict]]:
        """The paper's procedure: free latents from ``N(0, I)`` minimise ``mean L_align(y)``."""
        c = self.config
        y = torch.randn((c.latents, 2), generator=self.generator).requires_grad_(True)
        curve = self._optimise(
            [y], lambda step: self.prior.alignment_loss(y, draws=c.draws, generator=self.generator).mean(),
            lambda: y.detach(), "align")
        return y.detach(), curve

    def match(self) -> tuple[torch.Tensor, list[dict]]:
        """Distribution matching: free latents from ``N(0, I)`` move along ``v_aux - v_prior``; before each
        update the auxiliary flow takes ``aux_steps`` flow-matching steps on the current latents."""
        c = self.config
        y = torch.randn((c.latents, 2), generator=self.generator).requires_grad_(True)
        aux = AuxiliaryFlow(self.prior.velocity, MatchConfig(aux_steps=c.aux_steps, aux_lr=c.aux_lr))

        def loss(step: int) -> torch.Tensor:
            aux.fit(y, generator=self.generator)
            return matching_loss(self.prior.velocity, aux.velocity, y, draws=c.draws, generator=self.generator).mean()

        curve = self._optimise([y], loss, lambda: y.detach(), "match")
        return y.detach(), curve

    def latent_metrics(self, y: torch.Tensor, z_eval: torch.Tensor, curve: list[dict]) -> dict:
        modes = self.modes_in_prior_space()
        out = {
            "nll_latents": self.true_nll(y).mean().item(),
            "knn_nll": metrics.knn_nll(y, z_eval).mean().item(),
            "spread": metrics.spread_ratio(y, z_eval, modes),
            "mmd": metrics.mmd(y, z_eval),
            "sliced_w2": metrics.sliced_wasserstein(y, z_eval),
            "spearman_training": _spearman(torch.tensor([r["align"] for r in curve]),
                                           torch.tensor([r["nll"] for r in curve])) if curve else None,
        }
        if modes is not None:
            out["mode_coverage"] = metrics.mode_coverage(y, modes)
            out["mode_shares"] = metrics.mode_shares(y, modes).tolist()
        return out

    def modes_in_prior_space(self) -> torch.Tensor | None:
        modes = self.target.modes
        return None if modes is None else self.prior.to_prior(modes.float())


def run_toy(config: ToyConfig, progress: Say = print) -> tuple[dict, dict]:
    """Run the experiment; return ``(metrics, arrays)`` (arrays feed the plots)."""
    run = ToyRun(config, progress)
    start = time.perf_counter()
    progress(f"[{config.distribution}] fitting the prior ({config.width} x {config.depth}, {config.fit_steps} steps)")
    prior_metrics = run.fit_prior()
    z_eval = run.prior.to_prior(run.target.sample(config.n_eval, run.generator))
    nll_target = run.true_nll(z_eval).mean().item()
    lim = z_eval.abs().max().item() + 0.5  # the landscape covers the data with a margin
    progress(f"[{config.distribution}] L_align landscape on a {config.grid}x{config.grid} grid")
    land = run.landscape(-lim, lim)
    progress(f"[{config.distribution}] aligning {config.latents} latents (L_align only)")
    y_align, curve_align = run.align()
    align_metrics = run.latent_metrics(y_align, z_eval, curve_align)
    progress(f"[{config.distribution}] aligning {config.latents} latents (distribution matching)")
    y_match, curve_match = run.match()
    match_metrics = run.latent_metrics(y_match, z_eval, curve_match)
    y_prior = run.prior.sample(config.latents, generator=run.generator)
    prior_samples = {k: v for k, v in run.latent_metrics(y_prior, z_eval, []).items() if k != "spearman_training"}
    summary = {
        "distribution": config.distribution,
        "spearman_landscape": land["spearman"],
        **align_metrics,
        "nll_target": nll_target,
        "target_knn_nll": metrics.knn_nll(z_eval[: config.latents], z_eval[config.latents:]).mean().item(),
        "spread_method": "within-mode" if run.target.modes is not None else "knn-distance",
        "matching": match_metrics,
        "prior_samples": prior_samples,
        "prior": prior_metrics,
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
    }
    arrays = {"landscape": land, "y_align": y_align, "y_match": y_match, "y_prior": y_prior, "curve_align": curve_align,
              "curve_match": curve_match, "modes": run.modes_in_prior_space()}
    return summary, arrays
