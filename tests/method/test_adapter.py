"""A site prior's adapter of the core: a fresh one is the core exactly, only its parameters train, merging
changes nothing, and its file composes only with the core it was trained on."""

import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.method.adapter import LowRankLinear, adapter_tensors, attach, load_adapter, merge
from pipeline.method.configs import AdapterConfig, FitConfig, VelocityConfig
from pipeline.method.losses import flow_matching_loss
from pipeline.method.prior import FlowPrior
from pipeline.method.training import EMA, make_optimiser
from pipeline.method.velocity import VelocityMLP

CONFIG = AdapterConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def core() -> VelocityMLP:
    torch.manual_seed(0)
    model = VelocityMLP(VelocityConfig(dim=3, width=16, depth=2, frequency_dim=8))
    with torch.no_grad():  # a trained-looking core: the zero-initialised layers are not zero any more
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def perturbed(model: VelocityMLP) -> VelocityMLP:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_a_zero_initialised_adapter_is_the_core_exactly(core):
    adapted = attach(core, CONFIG).eval()
    x, t = torch.randn(32, 3), torch.rand(32)
    assert torch.equal(adapted(x, t), core(x, t))
    assert all(isinstance(adapted.get_submodule(n), LowRankLinear)
               for n, m in core.named_modules() if isinstance(m, torch.nn.Linear))


def test_gradients_reach_only_the_adapter_and_the_core_is_untouched(core):
    before = {k: v.clone() for k, v in core.state_dict().items()}
    adapted = attach(core, CONFIG).train()
    trained = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trained == set(adapter_tensors(adapted)) and not any(".base." in n for n in trained)
    optimiser = make_optimiser(adapted, FitConfig(lr=1e-2))
    assert sum(len(g["params"]) for g in optimiser.param_groups) == len(trained)
    flow_matching_loss(adapted, torch.randn(64, 3)).mean().backward()
    for name, p in adapted.named_parameters():
        assert (p.grad is not None) == (name in trained), name
    assert any(p.grad.abs().sum() > 0 for n, p in adapted.named_parameters() if n.endswith("lora_b"))
    optimiser.step()
    assert all(torch.equal(v, core.state_dict()[k]) for k, v in before.items())


def test_the_ema_shares_the_frozen_core_and_averages_the_adapter(core):
    adapted = attach(core, CONFIG).train()
    ema = EMA(adapted, decay=0.5)
    base = dict(adapted.named_parameters())
    for name, p in ema.model.named_parameters():
        assert (p is base[name]) == (name not in ema.names), name  # frozen: shared, not copied
    perturbed(adapted)
    ema.update(adapted, step=1000)
    ours = dict(ema.model.named_parameters())
    assert all(torch.allclose(ours[n], 0.5 * base[n]) for n in ema.names if n.endswith("lora_b"))


def test_a_merged_adapter_equals_the_unmerged_one(core):
    adapted = perturbed(attach(core, CONFIG, seed=3)).eval()
    merged = merge(adapted)
    assert type(merged) is VelocityMLP and not any(isinstance(m, LowRankLinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(core.state_dict())  # loads like any prior's network
    x, t = torch.randn(64, 3), torch.rand(64)
    assert torch.allclose(merged(x, t), adapted(x, t), atol=1e-5)
    assert not torch.allclose(merged(x, t), core(x, t), atol=1e-3)  # the adapter did change the field
    # the thin input and output layers get full-rank updates; the width x width ones rank 4
    assert adapted.input.lora_a.shape == (3, 3) and adapted.blocks[0].mlp[0].lora_a.shape == (4, 16)


def test_the_adapter_loads_into_its_core_and_refuses_another_shape(core):
    adapted = perturbed(attach(core, CONFIG))
    tensors = adapter_tensors(adapted)
    x, t = torch.randn(8, 3), torch.rand(8)
    assert torch.equal(load_adapter(core, tensors, CONFIG).eval()(x, t), adapted.eval()(x, t))
    with pytest.raises(CheckpointError, match="does not fit this core's layers at rank 2"):
        load_adapter(core, tensors, AdapterConfig(rank=2, alpha=8.0))
    wider = VelocityMLP(VelocityConfig(dim=3, width=32, depth=2, frequency_dim=8))
    with pytest.raises(CheckpointError, match="has shape"):
        load_adapter(wider, tensors, CONFIG)


def test_an_adapter_file_holds_only_the_adapter_and_composes_only_with_its_core(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 3)
    core = FlowPrior.fit(x, width=16, depth=2, fit=FitConfig(steps=20, warmup=2, log_every=10))
    core_sha = core.save(tmp_path / "core.safetensors")
    from pipeline.sites.site_prior import site_fit_config, train_site_prior

    z = core.to_prior(x + 1.0)
    fit = site_fit_config(core, "finetune", 20, 1e-2, 64, 10)
    site = train_site_prior(core, z[:250], z[250:], "finetune", fit, adapter=CONFIG)
    assert site.info["method"] == "adapter" and site.adapter is not None
    sha = site.save_adapter(tmp_path / "site.safetensors", {"id": "prior-core", "sha256": core_sha})
    assert (tmp_path / "site.safetensors").stat().st_size < (tmp_path / "core.safetensors").stat().st_size / 2
    loaded = FlowPrior.load_adapter(tmp_path / "site.safetensors", core, core_sha, expected_sha256=sha)
    y, t = torch.randn(16, 3), torch.rand(16)
    assert torch.allclose(loaded.velocity(y, t), site.velocity(y, t), atol=1e-6)
    assert loaded.info["history"] == site.info["history"] and torch.equal(loaded.space.mean, core.space.mean)
    with pytest.raises(CheckpointError, match="an adapter of the core with SHA-256 .* not of this one"):
        FlowPrior.load_adapter(tmp_path / "site.safetensors", core, "f" * 64)
    with pytest.raises(CheckpointError, match="prior-adapter"):  # not a whole prior
        FlowPrior.load(tmp_path / "site.safetensors")
    with pytest.raises(ValueError, match="not an adapter"):
        core.save_adapter(tmp_path / "x.safetensors", {"id": "prior-core", "sha256": core_sha})
