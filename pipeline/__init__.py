"""flowprior: flow priors for aligning latent spaces, as a pipeline on Ray.

The public method API (no Ray needed):

    from pipeline import FlowPrior, FitConfig
"""

from pipeline.method.checkpoint import CheckpointError
from pipeline.method.prior import FlowPrior
from pipeline.method.training import FitConfig

__all__ = ["CheckpointError", "FitConfig", "FlowPrior"]
