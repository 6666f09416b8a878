"""Sweeps: their specs (YAML), the objective they minimise per site, the choice and the Pareto front.

The Ray Tune experiment that runs them is ``pipeline.jobs.sweep``; nothing here imports Ray.
"""

from pipeline.sweeps.objective import Selection, choose, pareto_front
from pipeline.sweeps.spec import Dimension, Scheduler, SweepSpec, load_sweep_spec

__all__ = ["Dimension", "Scheduler", "Selection", "SweepSpec", "choose", "load_sweep_spec", "pareto_front"]
