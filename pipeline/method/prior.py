"""``FlowPrior``: a frozen velocity model with the fixed map that brings features to its space.

    prior = FlowPrior.fit(x, latent_dim=32, projection="random")   # x: (n, d2) target features
    prior.alignment_loss(y, draws=4)        # (n,) L_align of latents y (n, 32); grads reach y only
    prior.log_likelihood(y, divergence="auto")   # (n,) log p(y), for evaluation
    prior.sample(1000)                      # (1000, 32) samples in prior (= latent) space
    prior.to_prior(x)                       # (n, 32) features mapped to prior space
    sha = prior.save("prior.safetensors"); FlowPrior.load("prior.safetensors", expected_sha256=sha)
    site.save_adapter("site.safetensors", {"id": core_id, "sha256": sha})   # a site prior trained as an adapter
    FlowPrior.load_adapter("site.safetensors", core, core_sha256=sha)        # core + adapter, merged

Prior space: ``z = (x P^T - mean) / scale`` (``prior.space``, a
:class:`~pipeline.method.prior_space.PriorSpace`). The velocity field, latents, samples and
likelihoods all live there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.errors import CheckpointError, DataError
from pipeline.method.adapter import load_adapter, merge
from pipeline.method.checkpoint import load_checkpoint, save_checkpoint
from pipeline.method.configs import AdapterConfig, FitConfig, VelocityConfig
from pipeline.method.inputs import as_points
from pipeline.method.likelihood import log_likelihood
from pipeline.method.losses import alignment_loss, flow_matching_loss
from pipeline.method.ode import Solver
from pipeline.method.prior_space import PriorSpace
from pipeline.method.sampling import sample
from pipeline.method.training import fit_velocity
from pipeline.method.training_state import trained_velocity
from pipeline.method.velocity import VelocityMLP

CHECKPOINT_KIND = "flowprior.prior/v1"
ADAPTER_KIND = "flowprior.prior-adapter/v1"


@dataclass(frozen=True)
class Adapter:
    """What a site prior trained as an adapter of its core holds beyond the core (:mod:`pipeline.method.adapter`):
    its settings and tensors (``{"<layer>.lora_a" | ".lora_b" | ".bias": tensor}``)."""

    config: AdapterConfig
    tensors: dict[str, torch.Tensor]


def fit_info(space: PriorSpace, fit: FitConfig, history: list[dict], seed: int) -> dict:
    """What a prior's ``info`` records about its fit (a job may add its own keys, e.g. the feature schema)."""
    return {**space.settings(), "seed": seed, "feature_dim": space.feature_dim, "fit": fit.to_dict(),
            "history": history}


class FlowPrior:
    """A fitted, frozen flow prior. Build with :meth:`fit` or :meth:`load`."""

    def __init__(self, velocity: VelocityMLP, space: PriorSpace, info: dict | None = None,
                 adapter: Adapter | None = None) -> None:
        if velocity.config.dim != space.latent_dim:
            raise ValueError(f"inconsistent prior: velocity dim {velocity.config.dim}, prior space dim "
                             f"{space.latent_dim}")
        self.velocity = velocity.eval().requires_grad_(False)  # merged: an adapter's prior runs as fast as any
        self.space = space
        self.info = dict(info or {})
        self.adapter = adapter  # a site prior trained as an adapter of its core: what it saves

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
        device: torch.device | str = "cpu",
    ) -> "FlowPrior":
        """Fit a prior on target features ``x`` ``(n, d2)``, training on ``device`` (where the prior stays).

        ``width`` x ``depth`` default to the paper's 1024 x 6 (pass smaller ones on a CPU);
        ``fit`` holds the optimiser settings. ``latent_dim`` defaults to ``d2``; ``projection`` defaults to
        ``none`` when ``latent_dim == d2`` and ``random`` otherwise. ``seed`` fixes the projection,
        initialisation and noise draws.
        """
        x = as_points(x, "target features x", dtype=torch.float32)
        if x.shape[0] < 2:
            raise DataError("target features x need at least 2 rows to fit a prior")
        space = PriorSpace.fit(x, latent_dim, projection, normaliser, seed).to(device)
        z = space.apply(x)  # (n, d1), on the space's device
        with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            model = VelocityMLP(VelocityConfig(dim=space.latent_dim, width=width, depth=depth)).to(device)
        ema_model, history = fit_velocity(model, z, fit, seed=seed, progress=progress)
        return cls(ema_model, space, fit_info(space, fit, history, seed))

    @classmethod
    def from_training(
        cls,
        folder: str | os.PathLike,
        space: PriorSpace,
        fit: FitConfig,
        seed: int,
        info: dict | None = None,
        velocity: VelocityConfig | None = None,
    ) -> tuple["FlowPrior", dict]:
        """The prior a training checkpoint folder holds (its EMA weights, in ``space``), and the run's state.

        The folder is one :func:`~pipeline.method.training_state.save_training_state` wrote (or a legacy one,
        whose network shape ``velocity`` must be given, see :mod:`pipeline.method.training_state`). The
        prior's ``info`` is :func:`fit_info` of ``fit``, ``seed`` and the run's history, plus ``info``."""
        model, run = trained_velocity(folder, velocity)
        return cls(model, space, {**fit_info(space, fit, run["history"], seed), **(info or {})}), run

    # ----------------------------------------------------------------- properties
    @property
    def latent_dim(self) -> int:
        return self.space.latent_dim

    @property
    def feature_dim(self) -> int:
        return self.space.feature_dim

    def to(self, device: str | torch.device) -> "FlowPrior":
        """Move the prior to ``device`` (in place); returns ``self``."""
        self.velocity.to(device)
        self.space = self.space.to(device)
        return self

    # ----------------------------------------------------------------- the method
    def to_prior(self, x) -> torch.Tensor:
        """Target features ``(n, d2)`` to prior space ``(n, d1)``."""
        return self.space.apply(as_points(x, "features", dim=self.feature_dim, dtype=self.space.projection.dtype))

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
        x_0 = torch.randn((n, self.latent_dim), generator=generator, dtype=self.space.mean.dtype,
                          device=self.space.mean.device)
        return sample(self.velocity, x_0, solver)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> str:
        """Write a tensor-only checkpoint atomically; returns its file SHA-256."""
        tensors = {f"velocity.{k}": v for k, v in self.velocity.state_dict().items()}
        tensors.update(self.space.tensors())
        config = {"velocity": self.velocity.config.to_dict(), "info": self.info}
        return save_checkpoint(path, CHECKPOINT_KIND, config, tensors)

    def save_adapter(self, path: str | os.PathLike, core: dict[str, str]) -> str:
        """Write only this site prior's adapter (tensor-only), naming the ``core`` it adapts (its registry ``id``
        and its artifact's ``sha256``); returns the file's SHA-256."""
        if self.adapter is None:
            raise ValueError("this prior is not an adapter of a core: save it whole with save()")
        config = {"adapter": self.adapter.config.to_dict(), "core": core, "info": self.info}
        return save_checkpoint(path, ADAPTER_KIND, config, self.adapter.tensors)

    @classmethod
    def load_adapter(cls, path: str | os.PathLike, core: "FlowPrior", core_sha256: str,
                     expected_sha256: str | None = None) -> "FlowPrior":
        """The site prior ``core`` + the adapter :meth:`save_adapter` wrote, merged (no code runs); refuses a
        changed file and an adapter of another core (``core_sha256``: the hash of the file ``core`` came from)."""
        config, tensors = load_checkpoint(path, ADAPTER_KIND, expected_sha256)
        named = (config.get("core") or {}).get("sha256")
        if named != core_sha256:
            raise CheckpointError(f"{path}: an adapter of the core with SHA-256 {named}, not of this one "
                                  f"({core_sha256}); load it with its own core")
        try:
            settings = AdapterConfig(**config["adapter"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: checkpoint does not describe a valid adapter ({error})") from None
        velocity = merge(load_adapter(core.velocity, tensors, settings))
        return cls(velocity, core.space, config.get("info") or {}, Adapter(settings, tensors))

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None) -> "FlowPrior":
        """Load a checkpoint written by :meth:`save` (no code runs); refuses a changed file."""
        config, tensors = load_checkpoint(path, CHECKPOINT_KIND, expected_sha256)
        try:
            velocity = VelocityMLP(VelocityConfig(**config["velocity"]))
            state = {k.removeprefix("velocity."): v for k, v in tensors.items() if k.startswith("velocity.")}
            velocity.load_state_dict(state, strict=True)
            info = config.get("info") or {}
            return cls(velocity, PriorSpace.from_saved(tensors, info), info)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: checkpoint does not describe a valid prior ({error})") from None
