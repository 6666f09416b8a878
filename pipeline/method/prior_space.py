"""``PriorSpace``: the fixed map from target features (dim ``d2``) to prior space (dim ``d1``).

    space = PriorSpace.fit(x, latent_dim=8, projection="pca")   # x: (n, d2) features, or their Moments
    z = space.apply(x)                                          # (n, 8): z = (x P^T - mean) / scale
    sha = space.save("space.safetensors"); PriorSpace.load("space.safetensors", expected_sha256=sha)

``z = (x P^T - mean) / scale``: a projection ``P`` (``d1 x d2``, see
:func:`~pipeline.method.transforms.projection_matrix`), then a normaliser (``mean``, ``scale``, see
:func:`~pipeline.method.transforms.normaliser_stats`). It is fitted once on the target features,
seeded, and stored with every prior that lives in it, so an encoder's latents ``y``, the prior's
samples and ``space.apply(x)`` share one space. Fitting needs only the features'
:class:`~pipeline.method.moments.Moments`, so features streamed through many Ray tasks give the same
space as the same rows in memory.

This module imports no torch until a space is fitted, saved or loaded: the Ray Data tasks that map
features to prior space call :func:`to_prior_space` on numpy blocks (:meth:`PriorSpace.arrays`)
and never load torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.method.moments import Moments

if TYPE_CHECKING:
    import torch

CHECKPOINT_KIND = "flowprior.prior-space/v1"


def to_prior_space(x, p, mean, scale):
    """``z = (x P^T - mean) / scale``: ``(n, d2) -> (n, d1)``, for tensors or numpy arrays alike."""
    return (x @ p.T - mean) / scale  # (n, d1)


@dataclass(frozen=True)
class PriorSpace:
    """A fitted map to prior space. Build with :meth:`fit` or :meth:`load`."""

    projection: torch.Tensor  # P (d1, d2)
    mean: torch.Tensor  # (d1,)
    scale: torch.Tensor  # (d1,)
    kind: str = "none"  # the projection's name (see configs.PROJECTIONS)
    normaliser: str = "global"

    def __post_init__(self) -> None:
        d1 = self.projection.shape[0] if self.projection.ndim == 2 else -1
        if d1 < 1 or self.mean.shape != (d1,) or self.scale.shape != (d1,):
            raise ValueError(f"inconsistent prior space: projection {tuple(self.projection.shape)}, "
                             f"mean {tuple(self.mean.shape)}, scale {tuple(self.scale.shape)}")

    @classmethod
    def fit(cls, x: "torch.Tensor | Moments", latent_dim: int | None = None, projection: str | None = None,
            normaliser: str = "global", seed: int = 0) -> "PriorSpace":
        """Fit on features ``x`` ``(n, d2)`` or their moments. ``latent_dim`` defaults to ``d2``;
        ``projection`` to ``none`` when ``latent_dim == d2``, else ``random``; ``seed`` fixes a random one."""
        from pipeline.method.transforms import normaliser_stats, projection_matrix

        moments = x if isinstance(x, Moments) else Moments.of(x.detach().cpu().double())
        latent_dim = moments.dim if latent_dim is None else latent_dim
        kind = projection or ("none" if latent_dim == moments.dim else "random")
        p = projection_matrix(kind, moments, latent_dim, seed=seed)
        mean, scale = normaliser_stats(moments.project(p.double().numpy()), normaliser)
        return cls(p, mean, scale, kind, normaliser)

    @property
    def latent_dim(self) -> int:
        return self.projection.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.projection.shape[1]

    def apply(self, x: "torch.Tensor | np.ndarray") -> "torch.Tensor | np.ndarray":
        """:func:`to_prior_space`: features ``(n, d2)`` to prior space ``(n, d1)``. A tensor is moved to
        the space's device; a numpy array stays numpy."""
        if isinstance(x, np.ndarray):
            return to_prior_space(x, *self.arrays())
        return to_prior_space(x.to(self.projection.device), self.projection, self.mean, self.scale)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(P, mean, scale)`` as numpy arrays, for :func:`to_prior_space` where torch is not loaded."""
        return tuple(t.detach().cpu().numpy() for t in (self.projection, self.mean, self.scale))

    def to(self, device: str | torch.device) -> "PriorSpace":
        """This space with its tensors on ``device``."""
        return replace(self, projection=self.projection.to(device), mean=self.mean.to(device),
                       scale=self.scale.to(device))

    # ----------------------------------------------------------------- persistence
    def tensors(self) -> dict[str, torch.Tensor]:
        """The space's tensors, as a prior's checkpoint stores them."""
        return {"projection": self.projection, "mean": self.mean, "scale": self.scale}

    def settings(self) -> dict:
        """How the space was fitted (JSON), as a prior's ``info`` records it."""
        return {"projection": self.kind, "normaliser": self.normaliser}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], settings: dict) -> "PriorSpace":
        """The space from :meth:`tensors` and :meth:`settings` (a prior's ``info`` holds the latter)."""
        return cls(tensors["projection"], tensors["mean"], tensors["scale"], settings.get("projection", "none"),
                   settings.get("normaliser", "global"))

    def save(self, path: str | os.PathLike) -> str:
        """Write a tensor-only checkpoint atomically; returns its file SHA-256."""
        from pipeline.method.checkpoint import save_checkpoint

        return save_checkpoint(path, CHECKPOINT_KIND, self.settings(), self.tensors())

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None) -> "PriorSpace":
        """Load a checkpoint written by :meth:`save` (no code runs); refuses a changed file."""
        from pipeline.method.checkpoint import load_checkpoint

        settings, tensors = load_checkpoint(path, CHECKPOINT_KIND, expected_sha256)
        try:
            return cls.from_saved(tensors, settings)
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{path}: checkpoint does not describe a valid prior space ({error})") from None
