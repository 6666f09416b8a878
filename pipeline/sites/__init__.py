"""Sites: their specs (YAML), the reuse / finetune / refit decision, and the per-site jobs' inputs."""

from pipeline.sites.decision import DECISIONS, Thresholds, decide, measure, probe
from pipeline.sites.spec import SiteSpec, load_site_spec

__all__ = ["DECISIONS", "SiteSpec", "Thresholds", "decide", "load_site_spec", "measure", "probe"]
