"""The two parts of the map to prior space, ``z = (x P^T - mean) / scale`` (held by
:class:`~pipeline.method.prior_space.PriorSpace`): a fixed linear projection ``P`` (``d1 x d2``)
and a normaliser (``mean``, ``scale``). Both are fitted from the features'
:class:`~pipeline.method.moments.Moments` (count, mean, centred cross-products), so a fleet's
features streamed through many tasks give the same map as the same rows in memory.

Projections (paper, Sec. dimension mismatch): ``random`` (entries ``N(0, 1/d2)``, the
paper's best), ``pca`` (top-``d1`` eigenvectors of the covariance) and ``pool`` (average
pooling of contiguous feature groups); ``none`` is the identity and needs ``d1 = d2``.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import DataError, SpecError
from pipeline.method.configs import NORMALISERS, PROJECTIONS
from pipeline.method.moments import Moments


def _moments(x: "torch.Tensor | Moments") -> Moments:
    return x if isinstance(x, Moments) else Moments.of(x.detach().cpu().double())


def projection_matrix(
    kind: str, x: "torch.Tensor | Moments", latent_dim: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``(d1, d2)`` matrix ``P`` of a projection fitted on features ``x`` ``(n, d2)`` (or their moments)."""
    d2 = x.dim if isinstance(x, Moments) else x.shape[1]
    dtype = dtype if isinstance(x, Moments) else x.dtype
    if kind not in PROJECTIONS:
        raise SpecError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    if not 1 <= latent_dim <= d2:
        raise SpecError(
            f"latent_dim must be in [1, {d2}] (the feature dim) for a projection, got {latent_dim}"
        )
    if kind == "none":
        if latent_dim != d2:
            raise SpecError(
                f"projection 'none' needs latent_dim == feature dim ({d2}), got {latent_dim}; "
                "choose 'random', 'pca' or 'pool'"
            )
        return torch.eye(d2, dtype=dtype)
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        p = torch.randn((latent_dim, d2), generator=generator, dtype=torch.float64)
        return (p / d2**0.5).to(dtype)
    if kind == "pca":
        _, vectors = np.linalg.eigh(_moments(x).covariance)  # ascending
        axes = torch.from_numpy(vectors[:, ::-1][:, :latent_dim].T.copy())  # rows: principal axes
        # Sign convention: the largest-magnitude entry of each axis is positive (deterministic).
        signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
        return (axes * signs).to(dtype)
    # pool: row i averages features [floor(i d2 / d1), ceil((i + 1) d2 / d1)), like adaptive pooling
    p = torch.zeros((latent_dim, d2), dtype=dtype)
    for i in range(latent_dim):
        start, stop = (i * d2) // latent_dim, -((-(i + 1) * d2) // latent_dim)
        p[i, start:stop] = 1.0 / (stop - start)
    return p


def normaliser_stats(
    z: "torch.Tensor | Moments", kind: str = "global", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, scale)`` of projected features ``z`` ``(n, d1)`` (or their moments); both of shape ``(d1,)``.

    ``global`` divides every dimension by one global standard deviation,
    ``sqrt(tr(Cov z) / d1)`` (the official code's choice, which keeps relative scales);
    ``per-dim`` standardises each dimension, ``sqrt(diag(Cov z))``.
    """
    if kind not in NORMALISERS:
        raise SpecError(f"unknown normaliser {kind!r}; choose one of {', '.join(NORMALISERS)}")
    dtype = dtype if isinstance(z, Moments) else z.dtype
    moments = _moments(z)
    variance = np.diag(moments.covariance)
    scale = np.full(moments.dim, np.sqrt(variance.mean())) if kind == "global" else np.sqrt(variance)
    if (scale <= 1e-12 * (1 + np.abs(moments.mean))).any():
        raise DataError("target features have zero variance; cannot normalise them")
    return torch.tensor(moments.mean, dtype=dtype), torch.tensor(scale, dtype=dtype)

