"""One training-checkpoint format for every training loop: the prior fit's (one file, or a folder from before
#32), the encoder's (its layout unchanged), and the prior rebuilt from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipeline.errors import CheckpointError
from pipeline.method.checkpoint import load_training
from pipeline.method.configs import AlignConfig, EncoderConfig, EncoderLayout, FitConfig, VelocityConfig
from pipeline.method.encoder import TRAINING_KIND, Autoencoder, EncoderTraining
from pipeline.method.prior import FlowPrior
from pipeline.method.prior_space import PriorSpace
from pipeline.method.training import new_training, random_batches, train_loop, train_step
from pipeline.method.training_state import FILE, load_training_state, save_training_state

STORE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"
LEGACY = STORE / "store" / "ray-runs" / "fixture-fit" / "checkpoint_000000"  # as prior_fit_worker wrote it before #32
ENCODER = STORE / "store" / "ray-runs" / "fixture-sweep" / "trial_0" / "checkpoint_000000" / "training.safetensors"
EXPECTED = json.loads((STORE / "expected.json").read_text())
VELOCITY = VelocityConfig(dim=4, width=16, depth=1)
FIT = FitConfig(steps=6, warmup=2, batch_size=32, lr=1e-3)


def _total(module: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in module.state_dict().values()))


def _space() -> PriorSpace:
    return PriorSpace.fit(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), None, None, "global", 0)


def _trained():
    model, ema, optimiser = new_training(VELOCITY, FIT, "cpu", 0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 4, generator=g)
    train_loop(model, optimiser, ema, random_batches(z, 32, g), FIT, lambda _: None, every=3, generator=g)
    return model, ema, optimiser


def test_a_worker_folder_from_before_the_refactor_resumes_and_gives_its_prior():
    expected = EXPECTED["worker"]
    model, ema, optimiser = new_training(VELOCITY, FIT, "cpu", seed=123)  # other weights until loaded
    assert load_training_state(LEGACY, model, ema, optimiser) == expected["state"]
    assert (_total(model), _total(ema.model)) == (expected["model_sum"], expected["ema_sum"])
    assert [float(s["step"]) for s in optimiser.state_dict()["state"].values()][:1] == expected["adam_steps"]
    x_1 = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(train_step(model, optimiser, ema, x_1, 6, FitConfig(steps=10, warmup=2, batch_size=32)))

    prior, run = FlowPrior.from_training(LEGACY, _space(), FIT, 0, {"features": {"columns": ["a"]}}, velocity=VELOCITY)
    assert run == expected["state"] and _total(prior.velocity) == expected["ema_sum"]
    assert prior.info["history"] == expected["state"]["history"] and prior.info["fit"] == FIT.to_dict()
    assert prior.info["features"] == {"columns": ["a"]}
    with pytest.raises(CheckpointError, match="pass its velocity config"):
        FlowPrior.from_training(LEGACY, _space(), FIT, 0)


def test_a_checkpoint_is_one_file_that_resumes_exactly_and_gives_the_prior_of_its_ema(tmp_path):
    model, ema, optimiser = _trained()
    save_training_state(tmp_path, model, ema, optimiser, {"step": 6, "history": [{"step": 6, "train_fm": 1.0}]})
    assert [p.name for p in tmp_path.iterdir()] == [FILE]
    prior, run = FlowPrior.from_training(tmp_path, _space(), FIT, 0)  # the network's shape is in the file
    assert run == {"step": 6, "history": [{"step": 6, "train_fm": 1.0}]} and prior.info["history"] == run["history"]
    for name, value in ema.model.state_dict().items():
        assert torch.equal(prior.velocity.state_dict()[name], value), name
    with pytest.raises(CheckpointError, match="network is"):
        FlowPrior.from_training(tmp_path, _space(), FIT, 0, velocity=VelocityConfig(dim=4, width=32, depth=1))
    other = new_training(VelocityConfig(dim=4, width=32, depth=1), FIT, "cpu", 0)
    with pytest.raises(CheckpointError, match="another run"):
        load_training_state(tmp_path, *other)


def test_a_changed_checkpoint_or_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        load_training_state(tmp_path, *new_training(VELOCITY, FIT, "cpu", 0))
    save_training_state(tmp_path, *_trained(), {"step": 6})
    data = bytearray((tmp_path / FILE).read_bytes())
    data[-3] ^= 1
    (tmp_path / FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed"):
        load_training_state(tmp_path, *new_training(VELOCITY, FIT, "cpu", 0))


def test_an_encoder_training_state_from_before_the_refactor_loads_and_is_the_layout_written_today(tmp_path):
    model = Autoencoder(EncoderConfig(obs_dim=10, latent_dim=4, layout=EncoderLayout(widths=(16, 16))))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    state, rest = load_training(ENCODER, TRAINING_KIND, {"model": model}, {"adam": optimiser})
    assert (state["step"], state["history"]) == (EXPECTED["training"]["step"], EXPECTED["training"]["history"])
    assert set(rest) == {"generator"} and all(float(s["step"]) == 4 for s in optimiser.state.values())

    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 4, generator=g)
    prior = FlowPrior.fit(z, width=16, depth=1, fit=FitConfig(steps=5, warmup=1, batch_size=32), seed=0)
    config = AlignConfig(**{**state["align"], "eval_points": 100})
    training = EncoderTraining(torch.randn(400, 10, generator=g), prior, config, z,
                               layout=EncoderLayout(widths=(16, 16)))
    training.advance(4)
    training.save(tmp_path / "training.safetensors")
    layouts = []
    for path in (ENCODER, tmp_path / "training.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            layouts.append((f.metadata()["kind"], sorted(json.loads(f.metadata()["config"])), sorted(f.keys())))
    assert layouts[0] == layouts[1]
