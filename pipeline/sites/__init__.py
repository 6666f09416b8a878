"""Sites: their specs (YAML), the reuse / finetune / refit decision (:mod:`.decision`), the site steps and the
models they publish. The package loads without torch: the specs and the decision's settings are torch-free."""

from pipeline.sites.spec import DECISIONS, SiteSpec, Thresholds, load_site_spec

__all__ = ["DECISIONS", "SiteSpec", "Thresholds", "load_site_spec"]
