"""A site prior as a small adapter of a frozen core velocity network: low-rank weight updates and bias shifts.

Every linear layer ``W x + b`` of the core's :class:`~pipeline.method.velocity.VelocityMLP` (the input and output
layers, the time MLP, each block's MLP and AdaLN modulation, the final modulation) becomes

    W x + b  ->  (W + s B A) x + (b + delta_b),     A (r', in), B (out, r'), r' = min(rank, in, out), s = alpha / r'

with ``W`` and ``b`` frozen (the core's) and ``A``, ``B``, ``delta_b`` trained. ``B`` and ``delta_b`` start at zero,
so a fresh adapter is the core exactly, and ``A`` at ``N(0, 1 / in)``, so ``B`` gets gradients from the first step
(LoRA, Hu et al. 2021; ``delta_b`` is DiffFit's bias tuning, Xie et al. 2023). The thin layers (``dim -> width``
and back, ``dim`` = the prior's 4-32 dimensions) have ``r' = dim``: their update is full rank, which is what a
shifted or rescaled site needs there; the ``width x width`` layers, where the parameters are, get rank ``rank``.
Adam moves ``B`` by about ``lr`` per step whatever ``s`` is, so ``alpha`` sets how fast the update ``s B A``
can move against a full fine-tune at the same ``lr``.

Why rank 8 and ``alpha`` 64 (``AdapterConfig``; ``benchmarks/site_adapters.py``, docs/measured.md, "Site priors as
adapters"): at equal steps and lr against a full fine-tune, on the wind-farm sites of ``benchmarks/site_decisions.py``
with the demo's 128 x 3 core, ranks 4, 8 and 16 kept within 2 points of each other of the full fine-tune's
held-out FM gain (the change a site needs is low-rank), while ``alpha`` set the pace: on the four turbines' own
2015 rows (small gains) 8 kept 80-87%, 32 88-94%; on eight hard sites 32 kept 94-100%, 64 96-100%, 128 97-101%.
Rank 8 at ``alpha`` 64 keeps 95-100% on every site the check sends to ``finetune`` (94-96% at the paper's
1024 x 6); 128 was at most 2 points better, 64 leaves headroom against a larger ``finetune.lr``. At 1024 x 6 in 7
dimensions (35 M parameters) rank 8 trains 0.49 M (1.4%) and its artifact is 1.4% of the core's bytes (rank 16:
2.8%, over the 2% budget of issue #33).

Training runs the unmerged form (``x A^T`` then ``B``: the frozen ``W`` needs no weight gradient, and only the
adapter's parameters reach the optimiser and the EMA). :func:`merge` folds it into a plain network with
``W + s B A`` and ``b + delta_b``, so a site prior loaded from core + adapter runs exactly as fast as a full one.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.method.configs import AdapterConfig
from pipeline.method.velocity import VelocityMLP


class LowRankLinear(nn.Module):
    """``y = base(x) + s (x A^T) B^T + delta_b``, ``base`` frozen: one adapted layer (module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        out_features, in_features = base.weight.shape
        r = min(rank, in_features, out_features)
        self.scale = alpha / r
        self.lora_a = nn.Parameter(torch.randn(r, in_features, dtype=base.weight.dtype, device=base.weight.device)
                                   / math.sqrt(in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=base.weight.dtype, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.T) @ self.lora_b.T + self.bias

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + s B A`` and ``b + delta_b``."""
        out_features, in_features = self.base.weight.shape
        layer = nn.Linear(in_features, out_features, dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            layer.bias.copy_(self.base.bias + self.bias)
        return layer.requires_grad_(False)


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def attach(core: VelocityMLP, config: AdapterConfig, seed: int = 0) -> VelocityMLP:
    """A copy of ``core`` with every linear layer a :class:`LowRankLinear` of it (the core's weights frozen, the
    copy's only trainable parameters the adapter's; ``A`` drawn from ``seed``). ``core`` is not changed."""
    model = copy.deepcopy(core).requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in _linear_names(model):
            _replace(model, name, LowRankLinear(model.get_submodule(name), config.rank, config.alpha))
    return model


def adapter_tensors(model: VelocityMLP) -> dict[str, torch.Tensor]:
    """The adapter of an :func:`attach`-ed model: ``{"<layer>.lora_a" | ".lora_b" | ".bias": tensor}`` (CPU)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if name.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "bias") and not name.endswith("base.bias")}


def load_adapter(core: VelocityMLP, tensors: dict[str, torch.Tensor], config: AdapterConfig) -> VelocityMLP:
    """``core`` with the adapter ``tensors`` (:func:`adapter_tensors`) attached; a ``CheckpointError`` if they
    do not fit its layers (another core's adapter, or another rank)."""
    model = attach(core, config)
    expected = adapter_tensors(model)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                 f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, the core's layer needs "
                 f"{tuple(expected[wrong[0]].shape)}")
        raise CheckpointError(f"the adapter does not fit this core's layers at rank {config.rank} ({first})")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in tensors:
                p.copy_(tensors[name])
    return model


def merge(model: VelocityMLP) -> VelocityMLP:
    """A plain network equal to the adapted ``model`` (every :class:`LowRankLinear` folded into its layer)."""
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LowRankLinear):
            _replace(merged, name, module.merged())
    return merged.eval().requires_grad_(False)

