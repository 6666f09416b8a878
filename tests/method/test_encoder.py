"""The site encoder: robust scaling, alignment against lambda = 0, tensor-only checkpoints."""

import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.method.configs import AlignConfig, EncoderConfig, EncoderLayout, FitConfig
from pipeline.method.encoder import Autoencoder, EncoderTraining, load_encoder, save_encoder, train_encoder
from pipeline.method.metrics import mmd
from pipeline.method.prior import FlowPrior

SMALL = EncoderLayout(widths=(16,))  # a small MLP, for tests of the loop rather than of the fit


@pytest.fixture(scope="module")
def setting():
    """Observations (n, 6) that are a linear image of 2-D mixture points, and a prior fitted on those points."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    z = centres[torch.randint(0, 2, (4000,), generator=g)] + 0.4 * torch.randn(4000, 2, generator=g)
    mixing = torch.randn(2, 6, generator=g)
    observations = z @ mixing + 0.05 * torch.randn(4000, 6, generator=g)
    prior = FlowPrior.fit(z, width=64, depth=2, fit=FitConfig(steps=1200, warmup=50, lr=2e-3), seed=0)
    return observations, prior, z


def test_scaling_is_robust_to_wild_readings_and_to_columns_at_rest():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    gaussian = 3.0 + 2.0 * torch.randn(n, generator=g)
    wild = gaussian.clone()
    wild[:100] = 1e4  # 0.5% wild readings
    at_rest = torch.where(torch.rand(n, generator=g) < 0.7, 1e-3 * torch.randn(n, generator=g),  # jitters at rest
                          10 * torch.rand(n, generator=g))
    o = torch.stack([gaussian, wild, at_rest, torch.full((n,), 5.0)], dim=1)  # (n, 4)
    model = Autoencoder(EncoderConfig(obs_dim=4, latent_dim=1, layout=EncoderLayout(widths=(4,))))
    model.fit_scaling(o)
    assert model.centre[:2].tolist() == pytest.approx([3.0, 3.0], abs=0.1)
    assert model.scale[0].item() == pytest.approx(2.0, rel=0.05)  # the sd ...
    assert model.scale[1].item() == pytest.approx(2.0, rel=0.1)  # ... with 0.5% wild readings too (old MAD: 2.0)
    # 70% of the pitch-like column sits at ~0, so its MAD is ~1e-3: the quantile range keeps its readings
    # within a few units (MAD scaling put them at up to ~7,000)
    scaled = (o[:, 2] - model.centre[2]) / model.scale[2]
    assert model.scale[2].item() == pytest.approx(10 * (1 - 0.01 / 0.3) / 4.6527, rel=0.02)  # q_0.99 / 4.65
    assert scaled.abs().max().item() < 5
    assert model.scale[3].item() == 1.0  # a constant column keeps unit scale


@pytest.mark.slow
def test_alignment_pulls_latents_onto_the_prior_at_small_reconstruction_cost(setting):
    observations, prior, z = setting
    config = AlignConfig(lam=1.0, steps=600, log_every=100, eval_points=1000)
    aligned = train_encoder(observations, prior, config, z, layout=EncoderLayout(widths=(64, 64)), seed=0)
    baseline = train_encoder(observations, prior, AlignConfig(lam=0.0, steps=600, log_every=100, eval_points=1000),
                             z, layout=EncoderLayout(widths=(64, 64)), seed=0)
    assert [h["step"] for h in aligned.history] == [100, 200, 300, 400, 500, 600]
    a, b = aligned.metrics, baseline.metrics
    assert a["l_align"] < 0.6 * b["l_align"]  # alignment lowers L_align ...
    assert a["knn_nll"] < b["knn_nll"] - 0.5  # ... and with it the kNN NLL proxy against the target
    assert a["recon"] < 0.05 and b["recon"] < 0.05  # both reconstruct (the data are 2-D inside 6-D)
    assert aligned.history[-1]["l_align"] < aligned.history[0]["l_align"]
    assert not any(p.requires_grad for p in aligned.model.parameters())


@pytest.mark.slow
def test_distribution_matching_spreads_the_latents_like_the_target(setting):
    """Plain L_align piles the latents onto the two modes; matching gives them the target's spread."""
    observations, prior, z = setting
    z_prior = prior.to_prior(z)
    runs = {mode: train_encoder(observations, prior, AlignConfig(lam=1.0, steps=600, lr=3e-3, log_every=300,
                                                                 eval_points=1000, mode=mode), z_prior,
                                EncoderLayout(widths=(64, 64)), seed=0) for mode in ("align", "match")}
    align, match = runs["align"].metrics, runs["match"].metrics
    assert align["spread"] < 0.3 and 0.8 < match["spread"] < 1.2
    latents = {mode: run.model.encode(observations[:2000]) for mode, run in runs.items()}
    assert mmd(latents["match"], z_prior) < 0.2 * mmd(latents["align"], z_prior)
    assert match["recon"] < 0.05


@pytest.mark.slow
def test_checkpoints_round_trip_and_refuse_changes(setting, tmp_path):
    observations, prior, z = setting
    run = train_encoder(observations, prior, AlignConfig(lam=1.0, steps=20, log_every=10, eval_points=100), z,
                        SMALL, seed=0)
    path = save_encoder(run.model, tmp_path / "enc.safetensors", {"site": "a"})
    loaded = load_encoder(path)
    assert torch.equal(loaded.encode(observations[:5]), run.model.encode(observations[:5]))
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed"):
        load_encoder(path)


@pytest.mark.parametrize("mode", ["align", "match"])
@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_a_run_stopped_and_resumed_from_its_saved_state_ends_bit_for_bit_like_an_uninterrupted_one(
        setting, tmp_path, device, mode):
    observations, prior, z = setting
    config = AlignConfig(lam=0.5, steps=60, log_every=20, eval_points=200, draws=2, mode=mode)
    whole = train_encoder(observations, prior, config, z, layout=SMALL, seed=3, device=device)
    first = EncoderTraining(observations, prior, config, z, layout=SMALL, seed=3, device=device)
    first.advance(40)  # two log entries, then "interrupted"
    first.save(tmp_path / "state.safetensors")
    first.advance(5)  # work after the save is lost with the process
    second = EncoderTraining(observations, prior, config, z, layout=SMALL, seed=3, device=device)
    second.resume(tmp_path / "state.safetensors")
    assert second.step == 40 and len(second.history) == 2
    assert second.generator.device.type == device
    for p in second.model.parameters():  # the Adam moments came back beside their parameters (PyTorch keeps
        moments = {k: v for k, v in second.optimiser.state[p].items() if k != "step"}  # a plain Adam's step on CPU)
        assert p.device.type == device and moments and all(v.device == p.device for v in moments.values())
    assert [h["step"] for h in second.advance()] == [60]
    resumed = second.result()
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.metrics == whole.metrics
    other = EncoderTraining(observations, prior, AlignConfig(lam=0.1, steps=60), z, layout=SMALL, seed=3)
    with pytest.raises(CheckpointError, match="another run"):
        other.resume(tmp_path / "state.safetensors")


@pytest.mark.slow
def test_bad_settings_and_inputs_are_refused(setting):
    observations, prior, z = setting
    with pytest.raises(ValueError, match="lambda"):
        AlignConfig(lam=float("inf"))
    with pytest.raises(ValueError, match="steps"):
        AlignConfig(steps=0)
    with pytest.raises(ValueError, match="mode must be one of align, match"):
        AlignConfig(mode="kl")
    with pytest.raises(ValueError, match="aux_steps"):
        AlignConfig(mode="match", aux_steps=0)
    with pytest.raises(ValueError, match="target points has dimension 3, expected 2"):
        train_encoder(observations, prior, AlignConfig(steps=1), torch.zeros(10, 3))
    bad = observations.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="observations has 1 NaN"):
        train_encoder(bad, prior, AlignConfig(steps=1), z)
