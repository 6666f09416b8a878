"""The toy experiment: fit a prior on a 2-D target, then optimise 1,000 free latents against it.

Two ways to optimise the latents, reported side by side:

* ``align`` (the paper): latents ``y`` minimise ``L_align(y)`` with Adam (mode seeking);
* ``match`` (ours): Gaussian latents ``N(mu, sigma^2)`` minimise ``L_align`` of their samples
  minus ``beta`` times their entropy, ``beta`` calibrated from the prior (see
  :mod:`pipeline.method.matching`); metrics use one sample of each latent.

Everything is measured against the target's exact density, mapped to prior space
(``log p_Y(y) = log p_X(x) + sum log scale`` for ``y = (x - mean) / scale``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from scipy.stats import spearmanr

from pipeline.method import metrics
from pipeline.method.matching import CalibrationError
from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig
from pipeline.toy.targets import Target, get_target


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one toy run. Defaults fit in ~2 minutes on 2 CPU cores; ``quick()`` is for CI.

    The paper's own scale is ``width=512, depth=4, fit_steps=100_000, align_steps=5000`` (slow on a CPU).
    """

    distribution: str = "mog"
    n_train: int = 50_000
    width: int = 128
    depth: int = 4
    fit_steps: int = 3000
    fit_lr: float = 1e-3
    latents: int = 1000
    align_steps: int = 1000
    align_lr: float = 1e-2
    draws: int = 4
    beta: float | None = None  # None: calibrate from the prior
    beta_warmup: float = 0.3  # fraction of align_steps over which beta ramps up from 0
    grid: int = 64
    landscape_draws: int = 64
    n_eval: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        get_target(self.distribution)
        for name in ("n_train", "width", "depth", "fit_steps", "latents", "align_steps", "draws",
                     "grid", "landscape_draws", "n_eval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_eval <= self.latents:
            raise ValueError(f"n_eval ({self.n_eval}) must exceed latents ({self.latents}): the target's "
                             "kNN NLL is measured with held-out samples")
        if not 0 <= self.beta_warmup <= 1:
            raise ValueError(f"beta_warmup must be in [0, 1], got {self.beta_warmup!r}")
        if self.beta is not None and not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")

    def quick(self) -> "ToyConfig":
        """A CI-sized variant (~20 s): smaller network, fewer steps, fewer points."""
        return replace(self, n_train=20_000, width=64, depth=3, fit_steps=1500, fit_lr=2e-3,
                       latents=500, align_steps=500, grid=40, landscape_draws=32, n_eval=2000)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


class ToyRun:
    """State shared by the steps of one run: the target, its prior and the true NLL in prior space."""

    def __init__(self, config: ToyConfig, progress: Callable[[str], None]) -> None:
        self.config, self.progress = config, progress
        self.target: Target = get_target(config.distribution)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.prior: FlowPrior | None = None

    def true_nll(self, y: torch.Tensor) -> torch.Tensor:
        """``-log p_Y(y)`` under the target mapped to prior space: ``(n, 2) -> (n,)``."""
        p = self.prior
        x = y.detach().double() * p.scale.double() + p.mean.double()  # projection is the identity here
        return -(self.target.log_prob(x) + p.scale.double().log().sum())

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
        return {"fit_seconds": time.perf_counter() - start, "heldout_fm_loss": heldout}

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

    def match(self, beta: float) -> tuple[torch.Tensor, list[dict]]:
        """Gaussian latents minimise ``mean L_match``; returns one sample of each latent.

        ``beta`` ramps up linearly over the first ``beta_warmup`` of the steps: the means first
        find their modes (as plain alignment does), then the entropy widens each latent. With
        the full ``beta`` from the start, wide latents see a blurred landscape and their means
        drift to the centre of mass (measured on ``grid``: the corner modes emptied).
        """
        c = self.config
        mean = torch.randn((c.latents, 2), generator=self.generator).requires_grad_(True)
        log_std = torch.full((c.latents, 2), math.log(0.1)).requires_grad_(True)

        def draw() -> torch.Tensor:
            eps = torch.randn(mean.shape, generator=self.generator)
            return (mean + log_std.exp() * eps).detach()

        def loss(step: int) -> torch.Tensor:
            beta_now = beta * min(1.0, step / max(1.0, c.beta_warmup * c.align_steps))
            return self.prior.matching_loss(mean, log_std, beta_now, draws=c.draws, generator=self.generator).mean()

        curve = self._optimise([mean, log_std], loss, draw, "match")
        return draw(), curve

    def latent_metrics(self, y: torch.Tensor, z_eval: torch.Tensor, curve: list[dict]) -> dict:
        modes = self.modes_in_prior_space()
        out = {
            "nll_latents": self.true_nll(y).mean().item(),
            "knn_nll_latents": metrics.knn_nll(y, z_eval).mean().item(),
            "spread_ratio": metrics.spread_ratio(y, z_eval, modes),
            "mmd": metrics.mmd(y, z_eval),
            "sliced_wasserstein": metrics.sliced_wasserstein(y, z_eval),
            "spearman_training": _spearman(torch.tensor([r["align"] for r in curve]),
                                           torch.tensor([r["nll"] for r in curve])),
        }
        if modes is not None:
            out["mode_coverage"] = metrics.mode_coverage(y, modes)
            out["mode_shares"] = metrics.mode_shares(y, modes).tolist()
        return out

    def modes_in_prior_space(self) -> torch.Tensor | None:
        modes = self.target.modes
        return None if modes is None else self.prior.to_prior(modes.float())


def run_toy(config: ToyConfig, progress: Callable[[str], None] = print) -> tuple[dict, dict]:
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
    try:
        beta = config.beta if config.beta is not None else run.prior.calibrate_beta(seed=config.seed)
    except CalibrationError as error:
        progress(f"[{config.distribution}] matching skipped: {error}")
        y_match, curve_match, match_metrics = None, [], {"skipped": str(error)}
    else:
        progress(f"[{config.distribution}] aligning {config.latents} Gaussian latents (matching, beta={beta:.4f})")
        y_match, curve_match = run.match(beta)
        match_metrics = {"beta": beta, "beta_calibrated": config.beta is None,
                         **run.latent_metrics(y_match, z_eval, curve_match)}
    summary = {
        "distribution": config.distribution,
        "spearman_landscape": land["spearman"],
        **align_metrics,
        "nll_target": nll_target,
        "knn_nll_target": metrics.knn_nll(z_eval[: config.latents], z_eval[config.latents:]).mean().item(),
        "spread_method": "within-mode" if run.target.modes is not None else "knn-distance",
        "matching": match_metrics,
        "prior": prior_metrics,
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
    }
    arrays = {"landscape": land, "y_align": y_align, "y_match": y_match, "curve_align": curve_align,
              "curve_match": curve_match, "modes": run.modes_in_prior_space()}
    return summary, arrays
