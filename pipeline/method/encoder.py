"""Training a site's encoder: an autoencoder (:mod:`pipeline.method.autoencoder`, an MLP or a conv network) whose
latents ``y`` are aligned to a frozen prior (stage 2).

For observations ``o`` (n, d_obs), encoder ``E`` and decoder ``D`` (``y = E(o)`` of dim d1, the
prior's dimension), one run minimises

    L(E, D) = mean_i ||D(E(o_i)) - o_i||^2 / d_obs  +  lambda * mean_i L_align(E(o_i))

with ``L_align`` of :mod:`pipeline.method.losses` (K noise draws, the prior frozen), or, with
``mode="match"``, the distribution-matching surrogate of :mod:`pipeline.method.matching` in its place
(the latents' *distribution* moves to the prior's; an auxiliary flow follows the latents). ``lambda = 0``
is the plain autoencoder, the baseline every aligned encoder is compared with; a KL-regularised layout
(``kl > 0``) adds ``kl * mean_i KL(q(y | o_i) || N(0, I))``. Observations are standardised inside the model
(:meth:`Autoencoder.fit_scaling`: rows with the median and a robust scale of the training rows, so a few wild
sensor readings do not set the scale; images with one scale for all pixels).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.errors import CheckpointError
from pipeline.method.autoencoder import Autoencoder
from pipeline.method.checkpoint import load_checkpoint, load_training, save_checkpoint, save_training
from pipeline.method.configs import AlignConfig, EncoderConfig, EncoderLayout
from pipeline.method.inputs import as_points
from pipeline.method.matching import AuxiliaryFlow, matching_loss
from pipeline.method.metrics import knn_nll, spread_ratio
from pipeline.method.prior import FlowPrior

CHECKPOINT_KIND = "flowprior.encoder/v1"
TRAINING_KIND = "flowprior.encoder-training/v1"  # an unfinished run, to continue (sweep trials)


@dataclass
class EncoderRun:
    """A trained autoencoder and what was measured along the way and at the end."""

    model: Autoencoder
    config: AlignConfig
    history: list[dict] = field(default_factory=list)  # step, recon, l_align, knn_nll, spread (eval rows)
    metrics: dict = field(default_factory=dict)  # the last history entry, without "step"


@torch.no_grad()
def evaluate(model: Autoencoder, prior: FlowPrior, o: torch.Tensor, target: torch.Tensor, draws: int = 16,
             seed: int = 0) -> dict:
    """Reconstruction error (mean and median over rows: a few wild readings dominate the mean),
    ``L_align`` (fixed noise, ``draws`` draws), kNN NLL proxy of the latents
    against target points in prior space ``target`` (m, d1), and their spread relative to the target."""
    y = model.encode(o)
    generator = torch.Generator(device=o.device).manual_seed(seed)
    recon = model.reconstruction_error(o)
    return {"recon": recon.mean().item(), "recon_median": recon.median().item(),
            "l_align": prior.alignment_loss(y, draws=draws, generator=generator).mean().item(),
            "knn_nll": knn_nll(y, target).mean().item(),
            "spread": spread_ratio(y, target)}


class EncoderTraining:
    """One stage-2 run that can stop and continue: :meth:`advance` trains some more steps, :meth:`save`
    writes everything needed to continue bit for bit (weights, Adam moments, the learning-rate schedule,
    the sampling generator, the log so far) as a tensor-only checkpoint, and :meth:`resume` reads it.

    ``observations`` (n, d_obs) (for a conv ``layout``, images flattened row-major); ``target`` (m, d1) are
    target features in prior space, used only for the logged kNN NLL proxy and spread. Logs every
    ``config.log_every`` steps on ``config.eval_points`` fixed rows, and at the last step. Everything runs on
    ``device``: the data, the model, the sampling generator, and ``prior``, which is moved there (in place).
    Saved states load on any device.
    """

    def __init__(self, observations, prior: FlowPrior, config: AlignConfig, target,
                 layout: EncoderLayout = EncoderLayout(), seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.o = as_points(observations, "observations", dtype=torch.float32).to(self.device)
        self.target = as_points(target, "target points", dim=prior.latent_dim, dtype=torch.float32).to(self.device)
        self.prior, self.config, self.seed = prior.to(self.device), config, seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = Autoencoder(EncoderConfig(self.o.shape[1], prior.latent_dim, layout))
        self.model.to(self.device).fit_scaling(self.o)
        rows = torch.randperm(len(self.o), generator=self.generator, device=self.device)
        self.evaluation_rows = self.o[rows[: config.eval_points]]
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        match = config.mode == "match" and config.lam > 0
        self.aux = AuxiliaryFlow(self.prior.velocity, config.match_config()) if match else None
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimiser, config.steps)
        self.step = 0
        self.history: list[dict] = []  # step, recon, recon_median, l_align, knn_nll, spread, seconds
        self.seconds = 0.0  # training time so far, across resumes

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def advance(self, steps: int | None = None, progress: Callable[[dict], None] | None = None) -> list[dict]:
        """Train ``steps`` more steps (default: to the end), never past ``config.steps``; returns the new
        log entries."""
        end = self.config.steps if steps is None else min(self.config.steps, self.step + steps)
        model, config, new = self.model.train(), self.config, []
        start = time.perf_counter() - self.seconds
        while self.step < end:
            batch = self.o[torch.randint(0, len(self.o), (config.batch_size,), generator=self.generator,
                                         device=self.device)]
            y, reconstruction, kl = model(batch, self.generator)
            loss = ((reconstruction - batch) / model.scale).pow(2).mean() + model.config.layout.kl * kl.mean()
            if self.aux is not None:
                self.aux.fit(y, generator=self.generator)
                match = self.aux.config
                loss = loss + config.lam * matching_loss(self.prior.velocity, self.aux.velocity, y, config.draws,
                                                         (match.t_min, match.t_max), self.generator).mean()
            elif config.lam > 0:
                loss = loss + config.lam * self.prior.alignment_loss(y, draws=config.draws,
                                                                     generator=self.generator).mean()
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            self.schedule.step()
            self.step += 1
            if self.step % config.log_every == 0 or self.step == config.steps:
                model.eval()
                entry = {"step": self.step, **evaluate(model, self.prior, self.evaluation_rows, self.target,
                                                       seed=self.seed), "seconds": time.perf_counter() - start}
                model.train()
                self.history.append(entry)
                new.append(entry)
                if progress is not None:
                    progress(entry)
        self.seconds = time.perf_counter() - start
        model.eval()
        return new

    def result(self) -> EncoderRun:
        """The run so far, its model frozen (train further only after :meth:`resume`)."""
        metrics = {k: v for k, v in self.history[-1].items() if k not in ("step", "seconds")} if self.history else {}
        self.model.eval().requires_grad_(False)
        return EncoderRun(self.model, self.config, list(self.history), metrics)

    def save(self, path: str | os.PathLike) -> None:
        """Write the training state (see the class docstring)."""
        tensors, aux_groups = {"generator": self.generator.get_state()}, None
        if self.aux is not None:  # distribution matching: the auxiliary flow and its Adam moments too
            aux, aux_groups = self.aux.tensors()
            tensors |= {f"aux.{k}": v for k, v in aux.items()}
        state = {**self._run(), "step": self.step, "seconds": self.seconds, "history": self.history,
                 "schedule": self.schedule.state_dict(), "aux_groups": aux_groups}
        save_training(path, TRAINING_KIND, state, {"model": self.model}, {"adam": self.optimiser}, tensors)

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a state written by :meth:`save` for the same run (same settings and seed)."""
        self.model.requires_grad_(True)
        state, tensors = load_training(path, TRAINING_KIND, {"model": self.model}, {"adam": self.optimiser},
                                       expect=self._run())
        self.schedule.load_state_dict(state["schedule"])
        if self.aux is not None:
            self.aux.load_tensors({k[len("aux."):]: v for k, v in tensors.items() if k.startswith("aux.")},
                                  state["aux_groups"])
        self.generator.set_state(tensors["generator"])  # a CPU byte tensor, for a generator on any device
        self.step, self.seconds, self.history = state["step"], state["seconds"], state["history"]

    def _run(self) -> dict:
        """What makes a saved state this run's: the settings, the network's shape and the seed."""
        return {"align": self.config.to_dict(), "encoder": self.model.config.to_dict(), "seed": self.seed}


def train_encoder(
    observations,
    prior: FlowPrior,
    config: AlignConfig,
    target,
    layout: EncoderLayout = EncoderLayout(),
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    device: torch.device | str = "cpu",
) -> EncoderRun:
    """Train an autoencoder on ``observations`` (n, d_obs) with ``recon + lambda * L_align`` against
    ``prior`` in one go, on ``device`` (see :class:`EncoderTraining`)."""
    training = EncoderTraining(observations, prior, config, target, layout, seed, device)
    training.advance(progress=progress)
    return training.result()


def save_encoder(model: Autoencoder, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write a tensor-only checkpoint of ``model`` (see :mod:`pipeline.method.checkpoint`); returns ``path``."""
    save_checkpoint(path, CHECKPOINT_KIND, {"encoder": model.config.to_dict(), "info": info or {}}, model.tensors())
    return Path(path)


def load_encoder(path: str | os.PathLike, expected_sha256: str | None = None) -> Autoencoder:
    """Load a checkpoint written by :func:`save_encoder` (no code runs); refuses a changed file."""
    config, tensors = load_checkpoint(path, CHECKPOINT_KIND, expected_sha256)
    try:
        model = Autoencoder(EncoderConfig.from_dict(config["encoder"]))
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: checkpoint does not describe a valid encoder ({error})") from None
    return model.eval().requires_grad_(False)
