"""The training loop's device and precision paths, run on every device this machine has (CPU here;
the same code runs on CUDA in ``benchmarks/gpu_check.py``)."""

from __future__ import annotations

import pytest
import torch

from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.training import new_training, train_step
from pipeline.method.training_state import load_training_state, save_training_state

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
VELOCITY = VelocityConfig(dim=3, width=32, depth=2, frequency_dim=16)


def _steps(model, optimiser, ema, fit, batches, start, generator):
    return [train_step(model, optimiser, ema, x_1, start + i, fit, generator).item() for i, x_1 in enumerate(batches)]


@pytest.mark.parametrize("device", DEVICES)
def test_a_resumed_run_has_every_optimiser_tensor_on_the_model_device_and_continues_exactly(device, tmp_path):
    fit = FitConfig(steps=10, warmup=2, batch_size=16)
    data = torch.randn(5, 16, 3, generator=torch.Generator().manual_seed(1)).to(device)  # 5 batches (16, 3)
    model, ema, optimiser = new_training(VELOCITY, fit, device, seed=0)
    assert optimiser.defaults["fused"] is True
    _steps(model, optimiser, ema, fit, data[:3], 0, torch.Generator(device=device).manual_seed(2))
    save_training_state(tmp_path, model, ema, optimiser, {"step": 3})

    # a fresh process would build its model on the device (other initial weights) and then load
    resumed, resumed_ema, resumed_optimiser = new_training(VELOCITY, fit, device, seed=99)
    assert load_training_state(tmp_path, resumed, resumed_ema, resumed_optimiser) == {"step": 3}
    for p in resumed.parameters():
        state = resumed_optimiser.state[p]
        assert state and all(v.device == p.device for v in state.values() if torch.is_tensor(v)), state.keys()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    pairs = zip(resumed_ema.model.state_dict().items(), ema.model.state_dict().values(), strict=True)
    for (name, value), original in pairs:
        assert torch.equal(value, original), name

    # both continue on the same batches and noise: the resumed run is the uninterrupted one
    after = _steps(model, optimiser, ema, fit, data[3:], 3, torch.Generator(device=device).manual_seed(3))
    again = _steps(resumed, resumed_optimiser, resumed_ema, fit, data[3:], 3,
                   torch.Generator(device=device).manual_seed(3))
    assert after == again
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocasts_the_forward_but_keeps_weights_optimiser_and_loss_in_float32(device):
    seen: list[torch.dtype] = []
    losses = {}
    for precision in ("fp32", "bf16"):
        fit = FitConfig(steps=10, warmup=1, batch_size=64, precision=precision)
        model, ema, optimiser = new_training(VELOCITY, fit, device, seed=0)
        hook = model.input.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        x_1 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)).to(device)
        generator = torch.Generator(device=device).manual_seed(1)
        losses[precision] = train_step(model, optimiser, ema, x_1, 0, fit, generator)
        hook.remove()
        assert losses[precision].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in [*model.parameters(), *ema.model.parameters()])
        assert all(v.dtype == torch.float32 for s in optimiser.state.values() for k, v in s.items() if k != "step")
    assert seen == [torch.float32, torch.bfloat16]
    # same weights, batch and noise: bf16 matmuls change the loss by about their rounding (2^-8), no more
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=0.03)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        FitConfig(precision="fp16")


def test_each_report_gives_the_share_of_its_time_spent_waiting_for_the_next_batch():
    """A data source that blocks before each batch: every report's ``data_wait`` covers at least the time the
    source measured itself blocking in that report's steps, and is a share of the report's time."""
    import threading
    import time

    from pipeline.method.training import train_loop

    config = FitConfig(steps=8, warmup=1, batch_size=16)
    model, ema, optimiser = new_training(VelocityConfig(dim=2, width=16, depth=1), config)
    blocked: list[float] = []
    data_ready = threading.Event()  # never set: the source's wait stands for a slow read

    def slow_batches():
        while True:
            start = time.perf_counter()
            data_ready.wait(0.02)
            blocked.append(time.perf_counter() - start)
            yield torch.randn(16, 2)

    reports: list[dict] = []
    train_loop(model, optimiser, ema, slow_batches(), config, reports.append, every=4)
    assert [r["step"] for r in reports] == [4, 8]
    for k, report in enumerate(reports):
        window = 4 * 16 / report["samples_per_s"]  # this report's seconds of training
        assert sum(blocked[4 * k:4 * k + 4]) <= report["data_wait"] * window + 1e-6
        assert 0 < report["data_wait"] <= 1
