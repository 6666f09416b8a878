"""One readable training loop for a velocity network (stage 1), nanoGPT style.

AdamW (PyTorch's fused kernel, on CPU and GPU alike), linear warm-up then cosine decay, grad-norm
clipping, and an exponential moving average (EMA) of the weights; the EMA weights are what a prior
keeps. The paper's settings are ``FitConfig.paper()``; the defaults are scaled for a CPU (fewer
steps, larger lr).

Devices: the loop runs wherever the model's parameters and the batches are; build the model on
its device *before* the optimiser and the EMA (:func:`new_training`), so every optimiser tensor
lives beside its parameter. ``precision="bf16"`` runs the flow-matching forward and backward under
``torch.autocast(dtype=bfloat16)``; parameters, optimiser state, the EMA, the loss reduction and
every metric stay float32.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Iterator

import torch

from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.losses import flow_matching_loss
from pipeline.method.velocity import VelocityMLP


class EMA:
    """Exponential moving average of a model's parameters, ``theta_ema <- d theta_ema + (1 - d) theta``.

    The decay warms up as ``min(d, (1 + step) / (10 + step))`` so short runs are not
    dominated by the initial weights. Only the parameters that train are averaged; frozen ones (the core
    under an adapter) are shared with the model, not copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}  # shared, not copied
        self.model = copy.deepcopy(model, memo=frozen).requires_grad_(False)
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ours, theirs = dict(self.model.named_parameters()), dict(model.named_parameters())
        for name in self.names:
            ours[name].lerp_(theirs[name], 1 - d)


def make_optimiser(model: torch.nn.Module, config: FitConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each parameter; on a CPU 2.6x faster than PyTorch's
    default per-tensor loop at 35 M parameters, see ``benchmarks/train_step_profile.py``). Build it
    after the model is on its device: its state is created beside the parameters. Frozen parameters are left out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trained, lr=config.lr, betas=(config.beta1, config.beta2),
                             weight_decay=config.weight_decay, fused=True)


def new_training(velocity: VelocityConfig, config: FitConfig, device: torch.device | str = "cpu",
                 seed: int = 0) -> tuple[VelocityMLP, "EMA", torch.optim.AdamW]:
    """A fresh model (weights drawn from ``seed``) on ``device``, its EMA and its optimiser, in that order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VelocityMLP(velocity)
    model = model.to(device)
    return model, EMA(model, config.ema_decay), make_optimiser(model, config)


def autocast(config: FitConfig, device: torch.device):
    """The flow-matching forward's precision context: bf16 autocast on ``device`` if asked, else a no-op."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def train_step(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    ema: EMA | None,
    x_1: torch.Tensor,
    step: int,
    config: FitConfig,
    generator: torch.Generator | None = None,
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimisation step on the batch ``x_1`` ``(b, d)``: scheduled lr, ``L_FM``, clipping, EMA.

    Returns the batch loss ``L_FM`` (a detached scalar tensor; no device sync is forced). ``model`` may be
    wrapped (e.g. in DDP); the EMA (none: not kept) follows the unwrapped module. ``penalty(model)`` is
    added to the loss that is minimised (a federated site's proximal term), not to the one returned.
    With ``config.precision == "bf16"`` the forward runs under autocast; the backward follows the
    forward's dtypes (as autocast intends).
    """
    for group in optimiser.param_groups:
        group["lr"] = config.lr_at(step)
    with autocast(config, x_1.device):
        per_sample = flow_matching_loss(model, x_1, generator=generator, t_group=config.t_group)
    loss = per_sample.float().mean()
    optimiser.zero_grad(set_to_none=True)
    (loss if penalty is None else loss + penalty(model)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimiser.step()
    if ema is not None:
        ema.update(getattr(model, "module", model), step)
    return loss.detach()


def random_batches(z: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches ``(b, d)`` of rows of ``z`` drawn uniformly with replacement (in-memory data)."""
    while True:
        yield z[torch.randint(0, len(z), (batch_size,), generator=generator, device=z.device)]


def train_loop(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    ema: EMA,
    batches: Iterator[torch.Tensor],
    config: FitConfig,
    on_report: Callable[[dict], None],
    every: int,
    start_step: int = 0,
    generator: torch.Generator | None = None,
) -> None:
    """The training loop every prior fit runs (in memory, and in each Ray Train worker).

    Steps ``start_step .. config.steps - 1``, each on the next batch ``x_1`` ``(b, d)`` of ``batches``
    (:func:`train_step`). Every ``every`` steps and at the last, ``on_report`` receives ``step``,
    ``train_fm`` (mean batch loss since the last report), ``lr``, ``samples_per_s`` (this process's),
    ``data_wait`` (the share of that time spent waiting for the next batch) and ``seconds`` (since the
    loop started); it evaluates, logs or checkpoints as its caller needs.
    """
    running, count, rows, waited = None, 0, 0, 0.0
    start = started = time.perf_counter()
    model.train()
    for step in range(start_step, config.steps):
        asked = time.perf_counter()
        x_1 = next(batches)
        waited += time.perf_counter() - asked
        loss = train_step(model, optimiser, ema, x_1, step, config, generator)
        running, count, rows = loss if running is None else running + loss, count + 1, rows + len(x_1)
        if (step + 1) % every and step + 1 != config.steps:
            continue
        now = time.perf_counter()
        on_report({"step": step + 1, "train_fm": (running / count).item(), "lr": config.lr_at(step),
                   "samples_per_s": rows / (now - start), "data_wait": waited / (now - start),
                   "seconds": now - started})
        running, count, rows, waited = None, 0, 0, 0.0
        start = time.perf_counter()  # the report's own work (evaluation, checkpoints) is not training time


def fit_velocity(
    model: VelocityMLP,
    z: torch.Tensor,
    config: FitConfig,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
) -> tuple[VelocityMLP, list[dict]]:
    """Fit ``model`` on prior-space data ``z`` ``(n, d)`` in memory by flow matching; return the EMA model
    and the history logged every ``config.log_every`` steps (see :func:`train_loop`), plus whatever
    ``evaluate(ema_model)`` returns, e.g. a held-out loss. ``model`` may start from trained weights
    (a fine-tune)."""
    generator = torch.Generator(device=z.device).manual_seed(seed)
    optimiser = make_optimiser(model, config)
    ema = EMA(model, config.ema_decay)
    history: list[dict] = []

    def report(record: dict) -> None:
        if evaluate is not None:
            record.update(evaluate(ema.model))
        history.append(record)
        if progress is not None:
            progress(record)

    train_loop(model, optimiser, ema, random_batches(z, config.batch_size, generator), config, report,
               every=config.log_every, generator=generator)
    return ema.model.eval(), history
