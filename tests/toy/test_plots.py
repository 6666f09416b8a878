import torch

from pipeline.toy.plots import write_plots


def fake_run() -> tuple[dict, dict]:
    ticks = torch.linspace(-2, 2, 8)
    points = torch.cartesian_prod(ticks, ticks)
    land = {"ticks": ticks, "points": points, "nll": points.pow(2).sum(1), "align": points.pow(2).sum(1) + 1}
    curve = [{"step": s, "align": 2.0 / (s + 1), "nll": 5.0 / (s + 1)} for s in (0, 1, 10, 100)]
    stats = {"nll_latents": 0.1, "spread": 0.7, "spearman_training": 1.0}
    summary = {"distribution": "mog", "nll_target": 0.5, "spearman_landscape": 0.9, **stats,
               "matching": stats, "prior_samples": {**stats, "spearman_training": None}}
    arrays = {"landscape": land, "y_align": torch.randn(20, 2), "curve_align": curve, "y_match": torch.randn(20, 2),
              "curve_match": curve, "y_prior": torch.randn(20, 2), "modes": torch.zeros(1, 2)}
    return summary, arrays


def test_figures_are_written(tmp_path):
    paths = write_plots(*fake_run(), tmp_path)
    assert [p.name for p in paths] == ["latents.png", "landscape.png", "curves.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
