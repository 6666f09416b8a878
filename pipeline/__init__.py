"""flowprior: flow priors for aligning latent spaces, as a pipeline on Ray.

The public method API (no Ray needed):

    from pipeline import FlowPrior, FitConfig, PriorSpace, FlowpriorError

Layout: ``method`` (the maths, torch only), ``data`` (Parquet features), ``storage`` (the store),
``registry`` (records and lineage), ``cli``. Names are imported lazily so that commands that
only read the registry start without loading torch.
"""

from importlib import import_module

_EXPORTS = {"CheckpointError": "pipeline.errors", "FlowpriorError": "pipeline.errors",
            "FlowPrior": "pipeline.method.prior", "FitConfig": "pipeline.method.configs",
            "PriorSpace": "pipeline.method.prior_space"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
