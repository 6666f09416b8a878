"""Fixed maps from target features (dim ``d2``) to prior space (dim ``d1``).

``to_prior(x) = (x P^T - mean) / scale``: a fixed linear projection ``P`` (``d1 x d2``),
then a normaliser. Both are fitted once on the target features, seeded, and stored with
the prior, so latents ``y`` of an encoder live in the same space as the prior's samples.

Projections (paper, Sec. dimension mismatch): ``random`` (entries ``N(0, 1/d2)``, the
paper's best), ``pca`` (top-``d1`` principal axes) and ``pool`` (average pooling of
contiguous feature groups); ``none`` is the identity and needs ``d1 = d2``.
"""

from __future__ import annotations

import torch

PROJECTIONS = ("none", "random", "pca", "pool")
NORMALISERS = ("global", "per-dim")


def projection_matrix(
    kind: str, x: torch.Tensor, latent_dim: int, seed: int = 0
) -> torch.Tensor:
    """The ``(d1, d2)`` matrix ``P`` of a projection fitted on features ``x`` ``(n, d2)``."""
    d2 = x.shape[1]
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
    if not 1 <= latent_dim <= d2:
        raise ValueError(
            f"latent_dim must be in [1, {d2}] (the feature dim) for a projection, got {latent_dim}"
        )
    if kind == "none":
        if latent_dim != d2:
            raise ValueError(
                f"projection 'none' needs latent_dim == feature dim ({d2}), got {latent_dim}; "
                "choose 'random', 'pca' or 'pool'"
            )
        return torch.eye(d2, dtype=x.dtype)
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        p = torch.randn((latent_dim, d2), generator=generator, dtype=torch.float64)
        return (p / d2**0.5).to(x.dtype)
    if kind == "pca":
        centred = (x - x.mean(0)).double()
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows: principal axes
        axes = vh[:latent_dim]
        # Sign convention: the largest-magnitude entry of each axis is positive (deterministic).
        signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
        return (axes * signs).to(x.dtype)
    # pool: row i averages features [floor(i d2 / d1), ceil((i + 1) d2 / d1)), like adaptive pooling
    p = torch.zeros((latent_dim, d2), dtype=x.dtype)
    for i in range(latent_dim):
        start, stop = (i * d2) // latent_dim, -((-(i + 1) * d2) // latent_dim)
        p[i, start:stop] = 1.0 / (stop - start)
    return p


def normaliser_stats(z: torch.Tensor, kind: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, scale)`` of projected features ``z`` ``(n, d1)``; both of shape ``(d1,)``.

    ``global`` divides every dimension by one global standard deviation (the official code's
    choice, which keeps relative scales); ``per-dim`` standardises each dimension.
    """
    if kind not in NORMALISERS:
        raise ValueError(f"unknown normaliser {kind!r}; choose one of {', '.join(NORMALISERS)}")
    mean = z.mean(0)
    centred = z - mean
    if kind == "global":
        scale = centred.pow(2).mean().sqrt().expand(z.shape[1]).clone()
    else:
        scale = centred.pow(2).mean(0).sqrt()
    if (scale <= 0).any():
        raise ValueError("target features have zero variance; cannot normalise them")
    return mean, scale
