"""How good generated samples are, compared in a feature space with real ones (rows ``(n, d)`` of features,
e.g. a classifier's penultimate layer): the measures image generation reports.

* :func:`frechet_distance`: the Frechet (2-Wasserstein) distance between Gaussians fitted to both sets,

      FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r^{1/2} S_g S_r^{1/2})^{1/2}),

  FID when the features are Inception's; "rFID" compares reconstructions with their originals, "gFID"
  samples with held-out real images. It depends on the number of samples (biased upwards for few): compare
  values measured with the same counts only.
* :func:`precision_recall`: improved precision and recall (Kynkaenniemi et al. 2019) and coverage (Naeem et al.
  2020) with k-nearest-neighbour balls: precision is the share of generated points inside some real point's
  ball (radius: its distance to its k-th nearest real neighbour), recall the share of real points inside some
  generated point's ball, coverage the share of real points whose own ball holds a generated point. A
  generator that drops modes loses recall and coverage; one that makes implausible samples loses precision.
"""

from __future__ import annotations

import torch


def _gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])  # (d,), (d, d)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(s)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """FD between Gaussians fitted to ``real`` ``(n, d)`` and ``generated`` ``(m, d)`` (module docstring), in float64
    (``Tr (S_r^{1/2} S_g S_r^{1/2})^{1/2}`` from the eigenvalues of that symmetric matrix)."""
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"need two sets of features of one dimension, got {tuple(real.shape)} and "
                         f"{tuple(generated.shape)}")
    if min(len(real), len(generated)) < 2:
        raise ValueError("need at least 2 points in each set")
    (mu_r, s_r), (mu_g, s_g) = _gaussian(real), _gaussian(generated)
    root = _psd_sqrt(s_r)
    cross = torch.linalg.eigvalsh(root @ s_g @ root).clamp_min(0).sqrt().sum()
    return ((mu_r - mu_g).pow(2).sum() + s_r.trace() + s_g.trace() - 2 * cross).item()


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row: ``(n,)``."""
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the 1st is the point itself


def precision_recall(real: torch.Tensor, generated: torch.Tensor, k: int = 3) -> dict[str, float]:
    """``{"precision", "recall", "coverage"}`` of ``generated`` ``(m, d)`` against ``real`` ``(n, d)`` with
    ``k``-nearest-neighbour balls (module docstring); each in [0, 1]."""
    if not 1 <= k < min(len(real), len(generated)):
        raise ValueError(f"k must be in [1, {min(len(real), len(generated)) - 1}], got {k}")
    real, generated = real.double(), generated.double()
    distance = torch.cdist(generated, real)  # (m, n)
    real_radii, generated_radii = _radii(real, k), _radii(generated, k)
    return {"precision": (distance <= real_radii[None, :]).any(1).double().mean().item(),
            "recall": (distance <= generated_radii[:, None]).any(0).double().mean().item(),
            "coverage": (distance.min(0).values <= real_radii).double().mean().item()}
