"""Settings of a toy run (no torch: the ``flowprior toy`` command takes its choices and defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.errors import SpecError
from pipeline.method.configs import MatchConfig

TARGET_NAMES = ("mog", "grid", "moons", "rings", "spiral", "swissroll")  # the keys of ``targets.TARGETS``


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one toy run. Defaults take ~10 minutes on 2 CPU cores; ``quick()`` is for CI.

    Width 256: a 128-wide prior blurs the rings (its own samples spread 1.34x the target's), and latents
    can match only the prior they are given. The paper's own scale is ``width=512, depth=4,
    fit_steps=100_000, align_steps=5000`` (slow on a CPU).
    """

    distribution: str = "mog"
    n_train: int = 50_000
    width: int = 256
    depth: int = 4
    fit_steps: int = 3000
    fit_lr: float = 1e-3
    latents: int = 1000
    align_steps: int = 600
    align_lr: float = 1e-2
    draws: int = 4
    aux_steps: int = MatchConfig.aux_steps  # matching: auxiliary-flow steps per latent update
    aux_lr: float = MatchConfig.aux_lr
    grid: int = 64
    landscape_draws: int = 64
    n_eval: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distribution not in TARGET_NAMES:
            raise SpecError(f"unknown distribution {self.distribution!r}; choose one of {', '.join(TARGET_NAMES)}")
        for name in ("n_train", "width", "depth", "fit_steps", "latents", "align_steps", "draws",
                     "grid", "landscape_draws", "n_eval", "aux_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        if self.n_eval <= self.latents:
            raise SpecError(f"n_eval ({self.n_eval}) must exceed latents ({self.latents}): the target's "
                             "kNN NLL is measured with held-out samples")
        MatchConfig(aux_steps=self.aux_steps, aux_lr=self.aux_lr)  # validates them

    def quick(self) -> "ToyConfig":
        """A CI-sized variant (~20 s): smaller network, fewer steps, fewer points."""
        return replace(self, n_train=20_000, width=64, depth=3, fit_steps=1500, fit_lr=2e-3,
                       latents=500, align_steps=500, grid=40, landscape_draws=32, n_eval=2000)
