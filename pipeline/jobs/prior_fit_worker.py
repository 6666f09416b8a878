"""The per-worker loop of the core prior fit (runs inside Ray Train workers).

Each worker holds only its shard of the (already normalised, prior-space) training points and
draws its own batches; DDP averages the gradients, so ``workers x batch`` points make one step.
Rank 0 evaluates the EMA model on held-out points and writes the checkpoint at every report;
a restarted group resumes from the last one (weights, EMA, optimiser state, step).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from pipeline.method.metrics import heldout_fm, knn_nll, sliced_wasserstein
from pipeline.method.ode import Solver
from pipeline.method.sampling import sample
from pipeline.method.training import EMA, FitConfig, make_optimiser, train_step
from pipeline.method.velocity import VelocityConfig, VelocityMLP

STATE_FILE, EMA_FILE, MODEL_FILE, OPTIMISER_FILE = "state.json", "ema.safetensors", "model.safetensors", "optimiser.pt"


@torch.no_grad()
def heldout_metrics(model: torch.nn.Module, heldout: torch.Tensor, seed: int, n_samples: int = 1000) -> dict:
    """Held-out FM loss (fixed noise), and prior samples vs held-out points: sliced W2, the kNN NLL
    proxy of the samples under the held-out points and of the held-out points under the samples
    (``heldout_nll_proxy``, the baseline a site check compares a site's points with)."""
    fm = heldout_fm(model, heldout, seed)
    generator = torch.Generator(device=heldout.device).manual_seed(seed)
    x_0 = torch.randn((min(n_samples, len(heldout)), heldout.shape[1]), generator=generator, device=heldout.device)
    samples, heldout = sample(model, x_0, Solver(method="euler", steps=50)).cpu(), heldout.cpu()
    return {"heldout_fm": fm, "sliced_w2": sliced_wasserstein(samples, heldout, seed=seed),
            "knn_nll": knn_nll(samples, heldout).mean().item(),
            "heldout_nll_proxy": knn_nll(heldout, samples).mean().item(), "nll_samples": len(samples)}


def save_state(folder: str, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer, state: dict) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, MODEL_FILE))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.model.state_dict().items()}, os.path.join(folder, EMA_FILE))
    torch.save(optimiser.state_dict(), os.path.join(folder, OPTIMISER_FILE))  # tensors + numbers only
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(state, f)


def load_state(folder: str, model: torch.nn.Module, ema: EMA, optimiser: torch.optim.Optimizer) -> dict:
    """Restore from a checkpoint folder without executing code (safetensors, ``weights_only`` loads)."""
    model.load_state_dict(load_file(os.path.join(folder, MODEL_FILE)))
    ema.model.load_state_dict(load_file(os.path.join(folder, EMA_FILE)))
    optimiser.load_state_dict(torch.load(os.path.join(folder, OPTIMISER_FILE), weights_only=True))
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


def say(line: str) -> None:
    """Progress to the worker's real stdout (Ray streams it to the driver once; ``print`` is
    patched by Ray Train into its logger and would show twice)."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    fit = FitConfig(**config["fit"])
    seed, report_every, batch = config["seed"], config["report_every"], config["batch_per_worker"]

    z = torch.tensor(ray.get(config["shards"][rank]), device=device)  # (n_rank, d): this worker's share only
    heldout = torch.tensor(ray.get(config["heldout"]), device=device) if rank == 0 else None
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = VelocityMLP(VelocityConfig(**config["velocity"]))
    ema = EMA(model, fit.ema_decay)
    optimiser = make_optimiser(model, fit)
    state = {"step": 0, "history": [], "seconds": 0.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = load_state(folder, model, ema, optimiser)
        state["resumes"] = state.get("resumes", 0) + 1
        if rank == 0:
            say(f"[prior fit] resumed from step {state['step']}")
    model = ray.train.torch.prepare_model(model)
    ema.model.to(device)
    # The batch stream is a function of (seed, rank, step), so a resumed run draws fresh batches.
    generator = torch.Generator(device=device).manual_seed(seed * 100_003 + rank * 1_009 + state["step"])
    running, count, start = torch.zeros((), device=device), 0, time.perf_counter()
    for step in range(state["step"], fit.steps):
        idx = torch.randint(0, len(z), (batch,), generator=generator, device=device)
        running += train_step(model, optimiser, ema, z[idx], step, fit, generator)
        count += 1
        if (step + 1) % report_every and step + 1 != fit.steps:
            continue
        elapsed = time.perf_counter() - start
        metrics = {"step": step + 1, "resumes": state.get("resumes", 0), "train_fm": (running / count).item(),
                   "lr": fit.lr_at(step),
                   "samples_per_s": count * batch * world / elapsed, "seconds": state["seconds"] + elapsed}
        running, count = torch.zeros((), device=device), 0
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
        else:
            metrics.update(heldout_metrics(ema.model, heldout, seed, config["eval_samples"]))
            state = {**state, "step": step + 1, "history": [*state["history"], metrics], "seconds": metrics["seconds"]}
            say("[prior fit] " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in metrics.items()))
            with tempfile.TemporaryDirectory() as folder:
                save_state(folder, getattr(model, "module", model), ema, optimiser, state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        start = time.perf_counter()
