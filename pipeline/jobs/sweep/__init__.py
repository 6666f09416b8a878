"""A sweep as one Ray Tune experiment across all its sites, resumable, with a per-site choice recorded.

    result = run_sweep(load_sweep_spec("tuning/lambda.yaml"), Store.open("s3://bucket/flowprior"))
    result.record.id, result.choices["R80711"]["lam"]

1. For each site: the prior its encoder aligns to (its site prior, or the core prior on ``reuse``),
   its observations and target points in prior space, as for ``flowprior site align``.
2. Baselines: one lambda = 0 run per site (Tune experiment ``<name>-baseline``, run to the end);
   its reconstruction error is the reference of the selection rule.
3. Trials: Tune experiment ``<name>`` over sites x search space. Each trial is a *function
   trainable* (:mod:`.trial`) that trains one site's encoder, reports every ``epoch_steps`` steps
   (reconstruction, ``L_align``, kNN NLL proxy, spread, objective) with its training state as a
   tensor-only checkpoint. Early stopping (forecast or ASHA, :mod:`.scheduling`) compares a trial only
   with its own site's trials: objectives of different sites are on different scales. A Ray Train
   ``TorchTrainer`` per trial is avoided on purpose: in Ray 2.60 an early-stopped trial that wraps one
   keeps its placement group (ray-project/ray#54305).
4. A ``sweep`` record with every trial's settings and metrics, the choice per site (lowest
   objective among trials that ran to the end, see ``pipeline.sweeps.objective``) and the Pareto
   front; ``flowprior site align --from-sweep ID`` trains with the choice.

Experiments live under the store (``<store>/ray-runs/<name>``, local or S3; :mod:`.experiment`). The
name is ``<spec name>-<digest>`` of the settings and of each site's prior and data: rerunning the
same command resumes an interrupted sweep with ``Tuner.restore`` (finished trials are kept,
unfinished ones continue from their last epoch) or returns the recorded sweep; a changed spec, prior
or data is a new sweep. An experiment whose trials all ended leaves them as JSON (:mod:`.finished`): a later
sweep that needs it (the baselines of a new sweep over the same sites) reads them and runs nothing. Tune
keeps its experiment state as pickles, and unpickling runs code: an interrupted sweep resumes only with
``trust_store_state`` (``--trust-store-state``), else finding such state is an error.
"""

from pipeline.jobs.sweep.experiment import SweepInterrupted
from pipeline.jobs.sweep.run import SweepResult, run_sweep
from pipeline.jobs.sweep.scheduling import grid_points
from pipeline.jobs.sweep.trial import settings_of

__all__ = ["SweepInterrupted", "SweepResult", "grid_points", "run_sweep", "settings_of"]
