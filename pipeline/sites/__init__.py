"""Sites: their specs (YAML), the reuse / finetune / refit decision, and the per-site jobs' inputs.

The specs and the decision's settings load without torch; the measurements (``decide``, ``measure``,
``probe_finetune``, in :mod:`pipeline.sites.decision`) are imported on first use.
"""

from importlib import import_module

from pipeline.sites.spec import DECISIONS, SiteSpec, Thresholds, load_site_spec

_DECISION = ("decide", "measure", "probe_finetune")  # names of pipeline.sites.decision, which imports torch

__all__ = ["DECISIONS", "SiteSpec", "Thresholds", "decide", "load_site_spec", "measure", "probe_finetune"]


def __getattr__(name: str):
    if name in _DECISION:
        return getattr(import_module("pipeline.sites.decision"), name)
    raise AttributeError(f"module 'pipeline.sites' has no attribute {name!r}")
