"""The GPU path in one prepared run, without Ray (accelerator machines here have torch but no Ray).

    python benchmarks/gpu_check.py                       # on a GPU: the paper's prior, batch 4096 (< 8 min)
    python benchmarks/gpu_check.py --device cpu --width 32 --depth 2 --batch 64 --steps 5   # the CPU smoke run

1. **Peaks**: the best dense matmul rate of this device, measured now: bf16 and TF32 on a GPU
   (``torch.set_float32_matmul_precision("high")``, which the fp32 step below also uses), bf16 and
   fp32 on a CPU.
2. **Training step**: :func:`~pipeline.method.training.train_step` (the loop every prior fit runs:
   fused AdamW, clipping, EMA) at ``width x depth``, ``--batch``, in fp32 and bf16: samples/s,
   FLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one step) and the fraction of the peak of
   the same precision (fp32 against TF32 on a GPU).
3. **Kill and resume**: a child process trains on the device and checkpoints with the Ray worker's
   own :func:`~pipeline.method.training_state.save_training_state` every few steps, announcing each one and
   then waiting on its stdin for a go-ahead; it is SIGKILLed while it waits after its second
   checkpoint (so the kill lands at that known step), and this process resumes from exactly that
   checkpoint with :func:`~pipeline.method.training_state.load_training_state` onto a fresh model on the
   device, checks that the weights are the checkpoint's and that every optimiser tensor sits beside
   its parameter, and trains on.
4. **Site fine-tune and encoder alignment** on the device (:func:`~pipeline.sites.site_prior.train_site_prior`,
   full and as an adapter, whose file is loaded back onto the core on the device;
   :func:`~pipeline.method.encoder.train_encoder`), with their seconds and results.
5. **Image autoencoders** (``latent_generation.py``'s training steps at larger sizes): conv autoencoders on
   ``--image-size`` colour images (``--image-widths`` channels, 16-D latents, batch 256) trained plain, with
   ``L_align`` and with distribution matching against a ``width x depth`` prior on the device, and a latent
   generator of that size fitted on the aligned latents, sampled and decoded: seconds per step of each.

6. **Input pipeline vs the bf16 step**: the prior fit's per-file read (``pipeline.jobs.ingest.read_to_prior``,
   what each Ray Data read task runs: Parquet decode of the feature columns, the NaN check, the row hash
   and split, the map to prior space) on ``--ingest-rows`` rows of ``--dim`` float32 columns written to local
   disk, in this process on one core: training rows per second per core against the bf16 step's samples per
   second above, i.e. how many CPU cores of reading keep one device fed (needs pyarrow; skipped without it).

Everything goes to ``--json`` (default ``benchmarks/results/gpu_check.json`` on a GPU); a failed
check raises. Needs torch, numpy, safetensors, scipy and torchdiffeq (the method library's imports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.method.checkpoint import load_checkpoint  # noqa: E402
from pipeline.method.configs import AdapterConfig, AlignConfig, EncoderLayout, FitConfig, VelocityConfig  # noqa: E402
from pipeline.method.encoder import train_encoder  # noqa: E402
from pipeline.method.metrics import heldout_fm  # noqa: E402
from pipeline.method.ode import Solver  # noqa: E402
from pipeline.method.prior import FlowPrior  # noqa: E402
from pipeline.method.prior_space import PriorSpace  # noqa: E402
from pipeline.method.training import new_training, train_step  # noqa: E402
from pipeline.method.training_state import FILE, KIND, load_training_state, save_training_state  # noqa: E402
from pipeline.sites.site_prior import train_site_prior  # noqa: E402

from machine import cpu_name  # benchmarks/machine.py, beside this script  # noqa: E402

SAVE_EVERY = 5  # steps between the child's checkpoints


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, the best of ``repeats`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, 10)


def mixture(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(n, dim)``: two Gaussian modes at +-2 along every axis."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
    return (torch.randn(n, dim, generator=g) * 0.5 + sign).to(device)


def step_throughput(velocity: VelocityConfig, args, precision: str, device: torch.device) -> dict:
    fit = FitConfig(steps=10_000, warmup=10, batch_size=args.batch, precision=precision)
    model, ema, optimiser = new_training(velocity, fit, device, seed=0)
    data = mixture(args.batch * 4, velocity.dim, 0, device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = lambda i: data[(i % 4) * args.batch:(i % 4 + 1) * args.batch]  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimiser, ema, batch(0), 0, fit, generator)
    for i in range(3):
        train_step(model, optimiser, ema, batch(i), i, fit, generator)
    sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        loss = train_step(model, optimiser, ema, batch(i), i, fit, generator)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    if not torch.isfinite(loss):
        raise RuntimeError(f"{precision} training step gave a non-finite loss")
    flops = counter.get_total_flops()
    return {"samples_per_s": args.batch / seconds, "step_seconds": seconds, "flops_per_step": flops,
            "flop_per_s": flops / seconds, "loss": loss.item()}


def child(folder: str, args) -> None:
    """Train until killed, checkpointing every ``SAVE_EVERY`` steps (the kill-and-resume victim).

    After each checkpoint it prints ``saved <step>`` and blocks on a line from stdin before training
    on, so its parent kills it at an announced step, never after a guess; it returns when stdin ends
    (its parent went away)."""
    device = torch.device(args.device)
    velocity = VelocityConfig(dim=args.dim, width=args.width, depth=args.depth)
    fit = FitConfig(steps=10**9, warmup=10, batch_size=args.batch)
    model, ema, optimiser = new_training(velocity, fit, device, seed=0)
    data, generator = mixture(args.batch * 4, args.dim, 1, device), torch.Generator(device=device).manual_seed(1)
    step = 0
    while True:
        train_step(model, optimiser, ema, data[(step % 4) * args.batch:][:args.batch], step, fit, generator)
        step += 1
        if step % SAVE_EVERY == 0:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                save_training_state(tmp, model, ema, optimiser, {"step": step})
                os.replace(tmp, os.path.join(folder, f"step-{step:06d}"))  # complete checkpoints only
                os.mkdir(tmp)  # for TemporaryDirectory's clean-up
            print(f"saved {step}", flush=True)
            if not sys.stdin.readline():  # paused here until the parent says go on; EOF: no parent, stop
                return


def kill_and_resume(args, device: torch.device) -> dict:
    """SIGKILL a training child while it waits after its second announced checkpoint, then resume
    from exactly that checkpoint here (see :func:`child`)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, __file__, "--child", folder, "--device", args.device, "--dim", str(args.dim),
                   "--width", str(args.width), "--depth", str(args.depth), "--batch", str(args.batch)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        saved, announced = 0, None
        for line in process.stdout:
            if not line.startswith("saved "):
                continue
            saved, announced = saved + 1, int(line.split()[1])
            if saved == 2:
                break  # the child now waits on its stdin at step `announced`: kill it there
            process.stdin.write("go\n")
            process.stdin.flush()
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdin.close()
        process.stdout.close()
        if saved < 2:
            raise RuntimeError(f"kill-and-resume child ended (exit {process.returncode}) after {saved} checkpoints")
        checkpoints = sorted(Path(folder).glob("step-*"))
        last = Path(folder) / f"step-{announced:06d}"
        if checkpoints[-1] != last:
            raise RuntimeError(f"newest checkpoint is {checkpoints[-1].name}, not the announced {last.name}")
        velocity = VelocityConfig(dim=args.dim, width=args.width, depth=args.depth)
        fit = FitConfig(steps=10**9, warmup=10, batch_size=args.batch)
        model, ema, optimiser = new_training(velocity, fit, device, seed=123)  # other weights until loaded
        state = load_training_state(last, model, ema, optimiser)
        if state["step"] != announced:
            raise RuntimeError(f"checkpoint {last} holds step {state['step']}, the child announced {announced}")
        _, written = load_checkpoint(last / FILE, KIND)
        saved_weights = {k.removeprefix("model."): v for k, v in written.items() if k.startswith("model.")}
        wrong = [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), saved_weights[k])]
        if wrong:
            raise RuntimeError(f"resumed weights differ from checkpoint {last}: {wrong[:3]}")
        misplaced = [name for p, name in zip(model.parameters(), dict(model.named_parameters()), strict=True)
                     for v in optimiser.state[p].values() if torch.is_tensor(v) and v.device != p.device]
        if misplaced or not optimiser.state:
            raise RuntimeError(f"optimiser state not beside its parameters after resume: {misplaced[:3]}")
        data, generator = mixture(args.batch * 4, args.dim, 2, device), torch.Generator(device=device).manual_seed(2)
        losses = [train_step(model, optimiser, ema, data[(i % 4) * args.batch:][:args.batch], state["step"] + i, fit,
                             generator).item() for i in range(SAVE_EVERY)]
        if not all(map(lambda x: x == x and abs(x) < 1e6, losses)):
            raise RuntimeError(f"resumed training diverged: {losses}")
        return {"killed_after_checkpoints": saved, "killed_at_step": announced, "resumed_from_step": state["step"],
                "child_exit": process.returncode,
                "optimiser_tensors_on_device": sum(torch.is_tensor(v) for s in optimiser.state.values()
                                                   for v in s.values()), "losses_after_resume": losses}


def site_steps(args, device: torch.device) -> dict:
    """A small core prior, a site fine-tune from it and an encoder aligned to it, all on ``device``."""
    dim, steps = args.dim, args.site_steps
    fit = FitConfig(steps=steps, warmup=10, batch_size=256, log_every=steps)
    core_data, site_data = mixture(20_000, dim, 3, device), mixture(5_000, dim, 4, device) + 0.5
    model, _, _ = new_training(VelocityConfig(dim=dim, width=256, depth=3), fit, device)
    start = time.perf_counter()
    identity = PriorSpace(torch.eye(dim), torch.zeros(dim), torch.ones(dim))
    core_prior = train_site_prior(FlowPrior(model.eval(), identity).to(device),
                                  core_data[:18_000], core_data[18_000:], "refit", fit)
    core_seconds = time.perf_counter() - start
    start = time.perf_counter()
    site = train_site_prior(core_prior, site_data[:4_500], site_data[4_500:], "finetune", fit)
    finetune = {"seconds": time.perf_counter() - start,
                "heldout_fm_core": heldout_fm(core_prior.velocity, site_data[4_500:]),
                "heldout_fm_site": site.info["history"][-1]["heldout_fm"],
                "device": str(next(site.velocity.parameters()).device)}
    start = time.perf_counter()
    adapted = train_site_prior(core_prior, site_data[:4_500], site_data[4_500:], "finetune", fit,
                               adapter=AdapterConfig())
    with tempfile.TemporaryDirectory() as tmp:  # the adapter file alone, composed again with the core on the device
        core_sha = core_prior.save(Path(tmp) / "core.safetensors")
        adapted.save_adapter(Path(tmp) / "adapter.safetensors", {"id": "prior-core", "sha256": core_sha})
        loaded = FlowPrior.load_adapter(Path(tmp) / "adapter.safetensors", core_prior, core_sha)
    finetune["adapter"] = {"seconds": time.perf_counter() - start,
                           "heldout_fm_site": adapted.info["history"][-1]["heldout_fm"],
                           "heldout_fm_loaded": heldout_fm(loaded.velocity, site_data[4_500:]),
                           "device": str(next(loaded.velocity.parameters()).device)}
    observations = torch.cat([site_data[:4_000], torch.randn(4_000, 4, device=device)], dim=1)  # (4000, dim + 4)
    start = time.perf_counter()
    run = train_encoder(observations.cpu().numpy(), site, AlignConfig(lam=0.01, steps=steps, log_every=steps,
                        eval_points=1000), site_data[:2_000], device=device)
    align = {"seconds": time.perf_counter() - start, **run.metrics, "device": str(next(run.model.parameters()).device)}
    if not (finetune["device"].startswith(device.type) and align["device"].startswith(device.type)):
        raise RuntimeError(f"site steps did not run on {device}: {finetune['device']}, {align['device']}")
    return {"core_refit_seconds": core_seconds, "finetune": finetune, "align": align}


def blob_images(n: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(n, 3 size^2)``: colour images (3 x size x size, flattened) of a Gaussian blob of a random colour at a random
    place."""
    g = torch.Generator().manual_seed(seed)
    p, colour = size * (0.2 + 0.6 * torch.rand(n, 2, generator=g)), torch.rand(n, 3, 1, 1, generator=g)
    grid = torch.stack(torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij"), -1)
    blob = torch.exp(-((grid[None] - p[:, None, None]) ** 2).sum(-1) / (2 * (size / 8) ** 2))  # (n, size, size)
    return (colour * blob[:, None]).reshape(n, -1).to(device)  # (n, 3, size, size) -> (n, 3 size^2)


def fit_flow(x: torch.Tensor, args, seed: int) -> FlowPrior:
    """A ``width x depth`` flow fitted on ``x`` ``(n, d)`` on its device, ``--site-steps`` steps (in its own space)."""
    fit = FitConfig(steps=args.site_steps, batch_size=256, lr=1e-3, warmup=20, log_every=args.site_steps)
    return FlowPrior.fit(x, width=args.width, depth=args.depth, fit=fit, seed=seed, device=x.device)


def image_steps(args, device: torch.device) -> dict:
    """Section 5 of the module docstring."""
    steps, x = args.site_steps, mixture(20_000, 16, seed=5, device=device)
    start = time.perf_counter()
    prior = fit_flow(x, args, seed=0)
    result = {"prior_seconds_per_step": (time.perf_counter() - start) / steps}
    z = prior.to_prior(x[:2_000])
    images = blob_images(8_192, args.image_size, seed=6, device=device)
    layout = EncoderLayout(kind="conv", widths=tuple(args.image_widths), image_shape=(3, args.image_size,
                                                                                     args.image_size))
    for name, lam, mode in (("plain", 0.0, "align"), ("align", 0.01, "align"), ("match", 0.1, "match")):
        start = time.perf_counter()
        run = train_encoder(images, prior, AlignConfig(lam=lam, mode=mode, steps=steps, log_every=steps,
                                                       eval_points=1000), z, layout=layout, device=device)
        result[name] = {"seconds_per_step": (time.perf_counter() - start) / steps, **run.metrics,
                        "device": str(next(run.model.parameters()).device)}
    model, start = run.model, time.perf_counter()
    generator = fit_flow(model.encode(images).detach(), args, seed=1)
    space = generator.space
    decoded = model.decode(generator.sample(1_000, Solver(method="euler", steps=50)) * space.scale + space.mean)
    result["generator"] = {"seconds": time.perf_counter() - start, "samples": list(decoded.shape),
                           "finite": bool(torch.isfinite(decoded).all()), "device": str(decoded.device)}
    if not all(result[k]["device"].startswith(device.type) for k in ("plain", "align", "match", "generator")):
        raise RuntimeError(f"image steps did not run on {device}: {result}")
    return result


def ingest_rate(args, consumed: float) -> dict:
    """Section 6: training rows per second one core streams through the prior fit's read, against the
    ``consumed`` samples per second of the bf16 step."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline.data.scan import scan_features
        from pipeline.data.split import Split
        from pipeline.jobs.ingest import read_to_prior
        from pipeline.method.moments import Moments
    except ImportError as error:  # the device machine may lack pyarrow
        return {"skipped": f"{type(error).__name__}: {error}"}
    x = mixture(args.ingest_rows, args.dim, 1, torch.device("cpu")).numpy()  # (n, d) float32
    with tempfile.TemporaryDirectory() as folder:
        pq.write_table(pa.table({f"f{j:02d}": x[:, j] for j in range(args.dim)}), f"{folder}/part-0.parquet",
                       row_group_size=250_000)
        scan = scan_features(folder)
        space = PriorSpace.fit(Moments.of(x[:100_000]), args.dim).arrays()
        torch.set_num_threads(1)
        start = time.perf_counter()
        rows = sum(len(block["z"]) for block in read_to_prior({"file": [0]}, scan, Split(0.1), space))
        seconds = time.perf_counter() - start
        torch.set_num_threads(os.cpu_count() or 1)
    per_core = rows / seconds
    return {"rows_read": args.ingest_rows, "train_rows": rows, "seconds": seconds,
            "train_rows_per_s_per_core": per_core, "bf16_samples_per_s": consumed,
            "cores_to_keep_up": consumed / per_core, "cpu_cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per precision")
    parser.add_argument("--site-steps", type=int, default=500, help="steps of the site fine-tune and alignment")
    parser.add_argument("--image-size", type=int, default=64, help="side of the image autoencoders' images")
    parser.add_argument("--image-widths", type=int, nargs="+", default=[64, 128, 256],
                        help="channels of the image autoencoders' stride-2 stages")
    parser.add_argument("--ingest-rows", type=int, default=2_000_000, help="rows of the input-pipeline measurement")
    parser.add_argument("--json", help="output (default: benchmarks/results/gpu_check.json on a GPU, else none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu (and small sizes) for the smoke run")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on a GPU (no effect on a CPU)
    started = time.perf_counter()
    n = 8192 if device.type == "cuda" else 512  # a CPU's bf16 matmul may be emulated: slow
    fp32_name = "tf32" if device.type == "cuda" else "fp32"
    peaks = {"bf16": matmul_peak(device, torch.bfloat16, n), fp32_name: matmul_peak(device, torch.float32, n)}
    print("matmul peaks: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items()), flush=True)
    velocity = VelocityConfig(dim=args.dim, width=args.width, depth=args.depth)
    steps = {}
    for precision, peak in (("fp32", fp32_name), ("bf16", "bf16")):
        steps[precision] = step_throughput(velocity, args, precision, device)
        steps[precision]["fraction_of_peak"] = steps[precision]["flop_per_s"] / peaks[peak]
        steps[precision]["peak"] = peak
        print(f"training step {precision}: {steps[precision]['samples_per_s']:,.0f} samples/s, "
              f"{steps[precision]['fraction_of_peak']:.0%} of the {peak} peak", flush=True)
    resume = kill_and_resume(args, device)
    print(f"kill and resume: killed after step {resume['resumed_from_step']}, resumed on {device}", flush=True)
    site = site_steps(args, device)
    print(f"site fine-tune {site['finetune']['seconds']:.1f} s (held-out FM {site['finetune']['heldout_fm_core']:.3f} "
          f"-> {site['finetune']['heldout_fm_site']:.3f}); alignment {site['align']['seconds']:.1f} s", flush=True)
    images = image_steps(args, device)
    print("image autoencoders: " + ", ".join(f"{k} {images[k]['seconds_per_step'] * 1e3:.1f} ms/step"
                                             for k in ("plain", "align", "match"))
          + f"; latent generator {images['generator']['seconds']:.1f} s", flush=True)
    ingest = ingest_rate(args, steps["bf16"]["samples_per_s"])
    print("input pipeline: " + (ingest.get("skipped") or f"{ingest['train_rows_per_s_per_core']:,.0f} training rows/s "
          f"per CPU core; the bf16 step takes {ingest['bf16_samples_per_s']:,.0f} samples/s: "
          f"{ingest['cores_to_keep_up']:.2f} cores of reading keep it fed ({ingest['cpu_cores']} here)"), flush=True)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "json")}, "machine": machine,
              "matmul_peak_flop_per_s": peaks, "train_step": steps, "kill_and_resume": resume, "site": site,
              "images": images, "ingest": ingest,
              "seconds": time.perf_counter() - started}
    out = args.json or (str(Path(__file__).parent / "results" / "gpu_check.json") if device.type == "cuda" else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
