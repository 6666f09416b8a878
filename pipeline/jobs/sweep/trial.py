"""One sweep trial: what it is given (:class:`SiteData`), the function Tune runs, and what it leaves.

A trial trains one site's encoder with its settings (``lam``, ``lr``, ``draws``, ``mode``), continuing
from its checkpoint if it has one, and reports every ``epoch_steps`` steps: reconstruction,
``L_align``, kNN NLL proxy, spread and, once the site's baseline is known, the objective, with its
training state as a tensor-only checkpoint.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ray import tune

from pipeline.jobs.sweep.finished import EndedTrial
from pipeline.method.configs import AlignConfig, EncoderLayout
from pipeline.method.encoder import EncoderTraining
from pipeline.method.prior import FlowPrior
from pipeline.sweeps import Selection, SweepSpec
from pipeline.sweeps.spec import SWEPT

STATE_FILE = "training.safetensors"
HISTORY_KEYS = ("epoch", "recon", "recon_median", "l_align", "knn_nll", "spread", "objective")


@dataclass
class SiteData:
    """What one site's trials need, shipped to them once through Ray's object store."""

    prior_id: str
    prior: FlowPrior
    observations: np.ndarray  # (n, d_obs)
    target: torch.Tensor  # (m, d1) target points in prior space
    target_nll: float | None  # their kNN NLL proxy: the value of latents distributed like the target
    alignment: AlignConfig  # the site spec's, with the sweep's steps and epoch_steps
    layout: EncoderLayout
    seed: int
    fingerprint: str
    baseline_recon: list[float] | None = None  # the lambda = 0 run's, per epoch: filled in after the baselines ran


def settings_of(config: dict) -> dict:
    """A trial's flat settings: its grid point (``site`` and the grid dimensions) and any sampled ones."""
    return {**config.get("point", {}), **{k: v for k, v in config.items() if k != "point"}}


def run_trial(config: dict, sites: dict, selection: Selection, epoch_steps: int, threads: int, device: str) -> None:
    """The trial function Tune runs: train the site's encoder with the trial's settings (see
    :func:`settings_of`), continuing from the trial's checkpoint if it has one; report every epoch.
    ``sites`` maps each site to the object reference of its :class:`SiteData`."""
    import ray

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # in the trial's worker: not a line per checkpoint
    torch.set_num_threads(threads)
    config = settings_of(config)
    data: SiteData = ray.get(sites[config["site"]])
    align = replace(data.alignment, **{k: config[k] for k in SWEPT if k in config})
    observations = np.array(data.observations)  # a writable copy of the object store's read-only array
    training = EncoderTraining(observations, data.prior, align, data.target, data.layout, data.seed, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            training.resume(Path(folder) / STATE_FILE)
    while not training.done:
        entry = training.advance(epoch_steps)[-1]
        metrics = {k: entry[k] for k in ("step", "recon", "recon_median", "l_align", "knn_nll", "spread")}
        metrics["epoch"] = math.ceil(training.step / epoch_steps)
        if data.baseline_recon is not None:
            # against the baseline at the same epoch: early rungs compare like with like
            metrics["objective"] = selection.objective(metrics, data.baseline_recon[metrics["epoch"] - 1],
                                                       data.target_nll)
        with tempfile.TemporaryDirectory() as folder:
            training.save(Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trainable(sites: dict[str, SiteData], spec: SweepSpec, gpu: float):
    """:func:`run_trial` with its parameters and resources: one object reference per site, so a trial
    fetches only its own site's prior, observations and target points, never the other sites' arrays."""
    import ray

    refs = {site: ray.put(data) for site, data in sites.items()}
    function = tune.with_parameters(run_trial, sites=refs, selection=spec.select, epoch_steps=spec.epoch_steps,
                                    threads=max(1, int(spec.resources.cpu)), device="cuda" if gpu else "cpu")
    return tune.with_resources(function, {k.lower(): v for k, v in spec.resources.shape(gpu).items()})


def trial_entry(ended: EndedTrial, spec: SweepSpec, data: SiteData) -> dict:
    """An ended trial's entry in the sweep record: its settings, epochs, history and final numbers."""
    config = settings_of(ended.config)
    settings = {k: config.get(k, getattr(data.alignment, k)) for k in SWEPT}
    history = [dict(row) for row in ended.rows]
    final = {k: history[-1][k] for k in HISTORY_KEYS if k in history[-1]}
    if data.baseline_recon is not None:
        final["feasible"] = spec.select.feasible(final, data.baseline_recon[-1])
    return {"trial": ended.folder, "site": config["site"], "config": settings,
            "epochs": final["epoch"], "completed": final["epoch"] >= spec.epochs, "final": final,
            "history": history}
