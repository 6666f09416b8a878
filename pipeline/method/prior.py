"""``FlowPrior``: a frozen velocity model with the fixed map that brings features to its space.

    prior = FlowPrior.fit(x, latent_dim=32, projection="random")   # x: (n, d2) target features
    prior.alignment_loss(y, draws=4)        # (n,) L_align of latents y (n, 32); grads reach y only
    prior.log_likelihood(y, divergence="auto")   # (n,) log p(y), for evaluation
    prior.sample(1000)                      # (1000, 32) samples in prior (= latent) space
    prior.to_prior(x)                       # (n, 32) features mapped to prior space
    sha = prior.save("prior.safetensors"); FlowPrior.load("prior.safetensors", expected_sha256=sha)

Prior space: ``z = (x P^T - mean) / scale`` (see :mod:`pipeline.method.transforms`). The
velocity field, latents, samples and likelihoods all live there.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from pipeline.method.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.method.inputs import as_points
from pipeline.method.likelihood import log_likelihood
from pipeline.method.losses import alignment_loss, flow_matching_loss
from pipeline.method.ode import Solver
from pipeline.method.sampling import sample
from pipeline.method.training import FitConfig, fit_velocity
from pipeline.method.transforms import default_projection, fit_transform
from pipeline.method.velocity import VelocityConfig, VelocityMLP

CHECKPOINT_KIND = "flowprior.prior/v1"


class FlowPrior:
    """A fitted, frozen flow prior. Build with :meth:`fit` or :meth:`load`."""

    def __init__(
        self,
        velocity: VelocityMLP,
        projection: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        info: dict | None = None,
    ) -> None:
        d1, d2 = projection.shape
        if velocity.config.dim != d1 or mean.shape != (d1,) or scale.shape != (d1,):
            raise ValueError(
                f"inconsistent prior: projection {tuple(projection.shape)}, velocity dim "
                f"{velocity.config.dim}, mean {tuple(mean.shape)}, scale {tuple(scale.shape)}"
            )
        self.velocity = velocity.eval().requires_grad_(False)
        self.projection, self.mean, self.scale = projection, mean, scale
        self.info = dict(info or {})

    # ----------------------------------------------------------------- construction
    @classmethod
    def fit(
        cls,
        x,
        latent_dim: int | None = None,
        projection: str | None = None,
        normaliser: str = "global",
        width: int = 1024,
        depth: int = 6,
        fit: FitConfig = FitConfig(),
        seed: int = 0,
        progress: Callable[[dict], None] | None = None,
    ) -> "FlowPrior":
        """Fit a prior on target features ``x`` ``(n, d2)``.

        ``width`` x ``depth`` default to the paper's 1024 x 6 (pass smaller ones on a CPU);
        ``fit`` holds the optimiser settings. ``latent_dim`` defaults to ``d2``; ``projection`` defaults to
        ``none`` when ``latent_dim == d2`` and ``random`` otherwise. ``seed`` fixes the projection,
        initialisation and noise draws.
        """
        x = as_points(x, "target features x", dtype=torch.float32)
        if x.shape[0] < 2:
            raise ValueError("target features x need at least 2 rows to fit a prior")
        d2 = x.shape[1]
        latent_dim = d2 if latent_dim is None else latent_dim
        projection = default_projection(latent_dim, d2, projection)
        p, mean, scale = fit_transform(x, latent_dim, projection, normaliser, seed)
        z = (x @ p.T - mean) / scale  # (n, d1)
        with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            model = VelocityMLP(VelocityConfig(dim=latent_dim, width=width, depth=depth))
        ema_model, history = fit_velocity(model, z, fit, seed=seed, progress=progress)
        info = {"projection": projection, "normaliser": normaliser, "seed": seed,
                "feature_dim": d2, "fit": fit.to_dict(), "history": history}
        return cls(ema_model, p, mean, scale, info)

    # ----------------------------------------------------------------- properties
    @property
    def latent_dim(self) -> int:
        return self.projection.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.projection.shape[1]

    def to(self, device: str | torch.device) -> "FlowPrior":
        """Move the prior to ``device`` (in place); returns ``self``."""
        self.velocity.to(device)
        self.projection, self.mean, self.scale = (
            t.to(device) for t in (self.projection, self.mean, self.scale)
        )
        return self

    # ----------------------------------------------------------------- the method
    def to_prior(self, x) -> torch.Tensor:
        """Target features ``(n, d2)`` to prior space ``(n, d1)``."""
        x = as_points(x, "features", dim=self.feature_dim, dtype=self.projection.dtype)
        return (x.to(self.projection.device) @ self.projection.T - self.mean) / self.scale

    def _check_latents(self, y: torch.Tensor) -> None:
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[1] != self.latent_dim:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"latents must have shape (n, {self.latent_dim}), got {shape}")

    def alignment_loss(self, y: torch.Tensor, draws: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample ``L_align(y)`` ``(n,)`` with ``draws`` noise draws; see :mod:`pipeline.method.losses`."""
        self._check_latents(y)
        return alignment_loss(self.velocity, y, draws=draws, generator=generator)

    def flow_matching_loss(self, z: torch.Tensor, draws: int = 1,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean flow-matching loss of prior-space points ``z`` (e.g. held-out ``to_prior(x)``)."""
        self._check_latents(z)
        with torch.no_grad():
            return torch.stack(
                [flow_matching_loss(self.velocity, z, generator=generator) for _ in range(draws)]
            ).mean()

    def log_likelihood(
        self, y: torch.Tensor, divergence: str = "auto", solver: Solver = Solver(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``log p(y)`` ``(n,)`` in prior space; see :mod:`pipeline.method.likelihood`."""
        self._check_latents(y)
        return log_likelihood(self.velocity, y, divergence=divergence, solver=solver, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, solver: Solver = Solver(method="euler", steps=100),
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``(n, d1)`` from the prior (noise pushed through the flow)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x_0 = torch.randn((n, self.latent_dim), generator=generator, dtype=self.mean.dtype,
                          device=self.mean.device)
        return sample(self.velocity, x_0, solver)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> str:
        """Write a tensor-only checkpoint atomically; returns its file SHA-256."""
        tensors = {f"velocity.{k}": v for k, v in self.velocity.state_dict().items()}
        tensors.update(projection=self.projection, mean=self.mean, scale=self.scale)
        config = {"velocity": self.velocity.config.to_dict(), "info": self.info}
        return save_checkpoint(path, CHECKPOINT_KIND, config, tensors)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None) -> "FlowPrior":
        """Load a checkpoint written by :meth:`save` (no code runs); refuses a changed file."""
        config, tensors = load_checkpoint(path, CHECKPOINT_KIND, expected_sha256)
        try:
            velocity = VelocityMLP(VelocityConfig(**config["velocity"]))
            state = {k.removeprefix("velocity."): v for k, v in tensors.items() if k.startswith("velocity.")}
            velocity.load_state_dict(state, strict=True)
            return cls(velocity, tensors["projection"], tensors["mean"], tensors["scale"], config.get("info"))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: checkpoint does not describe a valid prior ({error})") from None
