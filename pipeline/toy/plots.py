"""PNG figures of a toy run: latents over the NLL heatmap, the L_align landscape, the curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import torch  # noqa: E402


def _heatmap(ax, land: dict, values: torch.Tensor, title: str, clip: float | None = None):
    g = len(land["ticks"])
    grid = values.reshape(g, g).T.numpy()  # (y, x) for imshow; points are x-major
    if clip is not None:
        grid = grid.clip(max=clip)
    lo, hi = land["ticks"][0].item(), land["ticks"][-1].item()
    image = ax.imshow(grid, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis_r", aspect="equal")
    ax.set_title(title, fontsize=10)
    return image


def _nll_clip(land: dict) -> float:
    return torch.quantile(land["nll"].float(), 0.6).item()  # keep the colour range on the data


def _runs(summary: dict, arrays: dict) -> list[tuple[str, dict, torch.Tensor, list[dict]]]:
    """``(title, metrics, latents, curve)`` of each optimisation: alignment, then matching."""
    return [("L_align only (paper)", summary, arrays["y_align"], arrays["curve_align"]),
            ("distribution matching", summary["matching"], arrays["y_match"], arrays["curve_match"])]


def plot_latents(summary: dict, arrays: dict, path: Path) -> None:
    land = arrays["landscape"]
    runs = [*_runs(summary, arrays), ("the prior's own samples", summary["prior_samples"], arrays["y_prior"], [])]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5), squeeze=False)
    for ax, (name, stats, y, _) in zip(axes[0], runs, strict=True):
        image = _heatmap(ax, land, land["nll"], f"{name}\nNLL {stats['nll_latents']:.2f} "
                         f"(target {summary['nll_target']:.2f}), spread x{stats['spread']:.2f}",
                         clip=_nll_clip(land))
        ax.scatter(y[:, 0], y[:, 1], s=2, c="crimson", alpha=0.6)
        if arrays["modes"] is not None:
            ax.scatter(arrays["modes"][:, 0], arrays["modes"][:, 1], marker="x", c="white", s=30)
    fig.colorbar(image, ax=axes[0].tolist(), label="true NLL (prior space)", shrink=0.8)
    fig.suptitle(f"{summary['distribution']}: 1,000 latents over the true NLL")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_landscape(summary: dict, arrays: dict, path: Path) -> None:
    land = arrays["landscape"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    a = _heatmap(axes[0], land, land["nll"], "true NLL", clip=_nll_clip(land))
    fig.colorbar(a, ax=axes[0], shrink=0.8)
    clip = torch.quantile(land["align"], 0.6).item()
    b = _heatmap(axes[1], land, land["align"], "L_align (64 draws per point)", clip=clip)
    fig.colorbar(b, ax=axes[1], shrink=0.8)
    fig.suptitle(f"{summary['distribution']}: pointwise Spearman(L_align, NLL) = {summary['spearman_landscape']:.3f}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(summary: dict, arrays: dict, path: Path) -> None:
    runs = _runs(summary, arrays)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (name, stats, _, curve) in zip(axes[0], runs, strict=True):
        steps = [max(r["step"], 1) for r in curve]
        ax.plot(steps, [r["align"] for r in curve], color="tab:blue", label="mean L_align")
        ax.set_xscale("log")
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("mean L_align", color="tab:blue")
        twin = ax.twinx()
        twin.plot(steps, [r["nll"] for r in curve], color="tab:red", label="mean true NLL")
        twin.set_yscale("symlog")
        twin.set_ylabel("mean true NLL", color="tab:red")
        ax.set_title(f"{name}: Spearman over the run {stats['spearman_training']:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(summary: dict, arrays: dict, out: Path) -> list[Path]:
    """Write the three figures under ``out``; return their paths."""
    paths = [out / "latents.png", out / "landscape.png", out / "curves.png"]
    for plot, path in zip((plot_latents, plot_landscape, plot_curves), paths, strict=True):
        plot(summary, arrays, path)
    return paths
