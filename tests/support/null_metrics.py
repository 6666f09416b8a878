"""A fleet whose records hold null metrics (NaN and inf are stored as null), for the views' tests."""

from pathlib import Path

from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.fleet import build_fleet


def null_metric_fleet(root: Path) -> tuple[str, dict]:
    """A fleet whose s1 check and s3 encoder recorded NaN/inf metrics (stored as null), s2's check lacks its
    numbers, and a sweep chose s1 a lambda it stored as null: what one diverged run leaves behind."""
    uri = str(root / "store")
    registry = Registry(Store.open(uri))
    fleet = build_fleet(registry)
    nan, inf = float("nan"), float("inf")
    fleet["check"] = registry.register("site-check", site="s1", parents=[fleet["core2"].id],
                                       config={"decision": "reuse"},
                                       metrics={"probe_gain": nan, "fm_ratio": inf, "nll_gap": nan, "mmd": 0.02})
    registry.register("site-check", site="s2", parents=[fleet["core2"].id], config={"decision": "reuse"})
    registry.register("encoder", site="s3", parents=[fleet["s3"].id], aligned_to=fleet["s3"].id,
                      metrics={"recon": nan, "knn_nll": -inf, "spread": 1.0})
    choice = {"mode": "align", "lam": None, "lr": 1e-3, "objective": None}  # a config keeps no NaN: null
    registry.register("sweep", config={"choices": {"s1": choice}})
    return uri, fleet

