"""Sample-based metrics: how well points ``y`` follow a target known through samples.

* ``knn_nll``: the paper's kNN NLL proxy. With ``r_k(y)`` the distance from ``y`` to its k-th
  nearest target sample (``n`` of them, dim ``d``), the kNN density estimate
  ``p(y) ~ k / (n V_d r_k^d)`` gives ``NLL(y) ~ d log r_k(y) + log(n V_d / k)``: an affine
  function of the paper's ``log r_k(y)``, on the NLL's scale.
* ``mmd``: unbiased squared maximum mean discrepancy with a sum of Gaussian kernels at
  bandwidths ``h / 2^k``, ``k = 0..5``, ``h`` the target's median pairwise distance (kernels
  only as wide as ``h`` see which modes are hit but not the shape inside each mode).
* ``sliced_wasserstein``: ``sqrt(E_theta W_2^2(theta^T y, theta^T x))`` over random directions.
* ``spread_ratio`` and ``mode_shares``: how much latents spread and which modes they cover.
* ``heldout_fm``: the flow-matching loss of held-out points with fixed noise (``draws`` per point);
  ``heldout_metrics``: it and the prior's samples against held-out points (what a prior fit reports).
* ``auroc``: how well a score ranks positives above negatives (the Mann-Whitney U statistic).
"""

from __future__ import annotations

import math

import torch

from pipeline.method.losses import flow_matching_loss
from pipeline.method.ode import Solver
from pipeline.method.sampling import sample


@torch.no_grad()
def heldout_fm(velocity: torch.nn.Module, z: torch.Tensor, seed: int = 0, draws: int = 3) -> float:
    """Mean ``L_FM`` of points ``z`` (n, d) over ``draws`` seeded ``(t, x_0)`` draws per point."""
    generator = torch.Generator(device=z.device).manual_seed(seed)
    losses = [flow_matching_loss(velocity, z, generator=generator).mean() for _ in range(draws)]
    return torch.stack(losses).mean().item()


def _kth_neighbour_distance(a: torch.Tensor, b: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of ``a`` to its k-th nearest row of ``b``: ``(n,)``."""
    out = [torch.cdist(a[i : i + chunk], b).kthvalue(k, dim=1).values for i in range(0, len(a), chunk)]
    return torch.cat(out)


def knn_nll(y: torch.Tensor, target: torch.Tensor, k: int = 5) -> torch.Tensor:
    """kNN estimate of ``-log p_target(y)``: ``(m, d), (n, d) -> (m,)``."""
    n, d = target.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    r_k = _kth_neighbour_distance(y, target, k).clamp_min(1e-12)
    log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return d * torch.log(r_k) + math.log(n / k) + log_unit_ball


def _median_distance(x: torch.Tensor, max_points: int = 2000) -> float:
    x = x[:max_points]
    dist = torch.cdist(x, x)
    return dist[torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)].median().item()


def mmd(y: torch.Tensor, x: torch.Tensor, max_points: int = 2000) -> float:
    """Unbiased multi-scale MMD^2 between samples ``y`` and target samples ``x`` (first ``max_points`` of each)."""
    y, x = y[:max_points].double(), x[:max_points].double()
    h = _median_distance(x)
    bandwidths = [h / 2**k for k in range(6)]  # h .. h/32: sees both mode shares and mode shapes

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in bandwidths)

    def mean_off_diagonal(k: torch.Tensor) -> torch.Tensor:
        m = k.shape[0]
        return (k.sum() - k.diagonal().sum()) / (m * (m - 1))

    return (mean_off_diagonal(kernel(y, y)) + mean_off_diagonal(kernel(x, x)) - 2 * kernel(y, x).mean()).item()


def sliced_wasserstein(
    y: torch.Tensor, x: torch.Tensor, projections: int = 256, seed: int = 0, quantiles: int = 512
) -> float:
    """Sliced 2-Wasserstein distance, by matching ``quantiles`` quantiles along random directions."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn((y.shape[1], projections), generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (d, P), unit columns
    q = (torch.arange(quantiles, dtype=torch.float64) + 0.5) / quantiles
    qy = torch.quantile(y.double() @ theta, q, dim=0)  # (Q, P)
    qx = torch.quantile(x.double() @ theta, q, dim=0)
    return (qy - qx).pow(2).mean().sqrt().item()


@torch.no_grad()
def heldout_metrics(model: torch.nn.Module, heldout: torch.Tensor, seed: int, n_samples: int = 1000) -> dict:
    """Held-out FM loss (fixed noise), and prior samples vs held-out points: sliced W2, the kNN NLL
    proxy of the samples under the held-out points and of the held-out points under the samples
    (``heldout_nll_proxy``, the baseline a site check compares a site's points with)."""
    fm = heldout_fm(model, heldout, seed)
    generator = torch.Generator(device=heldout.device).manual_seed(seed)
    x_0 = torch.randn((min(n_samples, len(heldout)), heldout.shape[1]), generator=generator, device=heldout.device)
    samples, heldout = sample(model, x_0, Solver(method="euler", steps=50)).cpu(), heldout.cpu()
    return {"heldout_fm": fm, "sliced_w2": sliced_wasserstein(samples, heldout, seed=seed),
            "knn_nll": knn_nll(samples, heldout).mean().item(),
            "heldout_nll_proxy": knn_nll(heldout, samples).mean().item(), "nll_samples": len(samples)}


def nearest_mode(y: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest mode for each point: ``(n, d), (M, d) -> (n,)``."""
    return torch.cdist(y, modes).argmin(dim=1)


def mode_shares(y: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Fraction of points nearest to each mode: ``(M,)``."""
    return torch.bincount(nearest_mode(y, modes), minlength=len(modes)).double() / len(y)


def mode_coverage(y: torch.Tensor, modes: torch.Tensor) -> float:
    """Fraction of modes holding at least half their fair share (``0.5 / M``) of the points."""
    return (mode_shares(y, modes) >= 0.5 / len(modes)).double().mean().item()


def within_mode_spread(y: torch.Tensor, modes: torch.Tensor) -> float:
    """Root-mean-square per-coordinate deviation of points from their nearest mode's centre."""
    return ((y - modes[nearest_mode(y, modes)]).pow(2).mean()).sqrt().item()


def local_spread(y: torch.Tensor, k: int = 5) -> float:
    """Mean distance from each point to its k-th nearest other point (a density-free spread)."""
    return _kth_neighbour_distance(y, y, k + 1).mean().item()  # k + 1: the point itself is at distance 0


def spread_ratio(y: torch.Tensor, x: torch.Tensor, modes: torch.Tensor | None = None) -> float:
    """Spread of ``y`` relative to target samples ``x`` (1 = same, < 1 = collapsed).

    With ``modes``: the ratio of within-mode spreads. Without: the ratio of mean k-NN
    distances, on equally many points of each (``x`` is subsampled to ``len(y)``).
    """
    if modes is not None:
        return within_mode_spread(y, modes) / within_mode_spread(x, modes)
    return local_spread(y) / local_spread(x[: len(y)])


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (n,) for boolean ``labels`` (n,): the probability that a
    random positive scores above a random negative, ties counting one half."""
    labels = labels.bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs positives and negatives, got {n_pos} and {n_neg}")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sorted_scores = scores.double()[order]
    # average ranks over ties: group equal scores and give each the mean of its group's ranks
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    group_mean = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks[order]) / counts
    ranks[order] = group_mean[inverse]
    return ((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()
