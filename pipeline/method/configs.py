"""The method's settings and their choices, without torch: what a spec, the CLI and a Ray job's driver
read and validate before anything heavy is imported.

The networks, the training loop and the losses that use them import them from here
(``velocity``, ``training``, ``matching``, ``encoder``, ``transforms``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.errors import SpecError
from pipeline.method.precision import PRECISIONS

PROJECTIONS = ("none", "random", "pca", "pool")
NORMALISERS = ("global", "per-dim")
ALIGNMENT_MODES = ("align", "match")
"""Alignment modes: ``align`` (``L_align``, the paper) and ``match`` (:mod:`pipeline.method.matching`)."""
ENCODER_KINDS = ("mlp", "conv")
"""Autoencoder networks: ``mlp`` on rows of numbers, ``conv`` on images (:class:`EncoderLayout`)."""
FINETUNE_METHODS = ("adapter", "full")
"""How a site prior is fine-tuned from the core: ``adapter`` (:mod:`pipeline.method.adapter`, the default) or
``full`` (every weight)."""


@dataclass(frozen=True)
class VelocityConfig:
    """Shape of a velocity network: data dim, hidden width, number of blocks.

    Defaults are the paper's prior (1024 x 6); its 2-D toy prior is 512 x 4.
    """

    dim: int
    width: int = 1024
    depth: int = 6
    frequency_dim: int = 256

    def __post_init__(self) -> None:
        for name in ("dim", "width", "depth", "frequency_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"VelocityConfig.{name} must be a positive integer, got {value!r}")
        if self.frequency_dim % 2:
            raise SpecError(f"VelocityConfig.frequency_dim must be even, got {self.frequency_dim}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class AdapterConfig:
    """A site prior's adapter of the core (:mod:`pipeline.method.adapter`): the rank of each layer's update
    ``s B A`` (thin layers: full rank) and ``alpha``, its scale ``s = alpha / rank``."""

    rank: int = 8
    alpha: float = 64.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise SpecError(f"adapter rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise SpecError(f"adapter alpha must be a finite number > 0, got {self.alpha!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings for fitting a prior."""

    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 250
    precision: str = PRECISIONS[0]  # "fp32", or "bf16": autocast for the flow-matching forward/backward (see training)
    t_group: int = 1  # samples sharing one (stratified) t; > 1 saves time-conditioning FLOPs (see losses)

    @classmethod
    def paper(cls) -> "FitConfig":
        """The paper's stage-1 settings (1M steps: for a GPU cluster, not a laptop)."""
        return cls(steps=1_000_000, lr=1e-4, warmup=2500, ema_decay=0.9999, log_every=1000)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "lr", "log_every")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SpecError(f"FitConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise SpecError("FitConfig: warmup and weight_decay must be >= 0, grad_clip > 0")
        if not (0 <= self.ema_decay < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise SpecError("FitConfig: ema_decay, beta1 and beta2 must be in [0, 1)")
        if not (isinstance(self.t_group, int) and self.t_group >= 1 and self.batch_size % self.t_group == 0):
            raise SpecError(f"FitConfig.t_group must be a positive divisor of batch_size {self.batch_size}, "
                             f"got {self.t_group!r}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"FitConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to 0."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class MatchConfig:
    """Settings of distribution matching: the ``t`` range and the auxiliary flow's optimiser."""

    t_min: float = 0.02
    t_max: float = 0.98
    aux_steps: int = 2  # flow-matching steps of the auxiliary flow per latent update
    aux_lr: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 <= self.t_min < self.t_max <= 1:
            raise SpecError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min!r}, t_max={self.t_max!r}")
        if isinstance(self.aux_steps, bool) or not isinstance(self.aux_steps, int) or self.aux_steps < 1:
            raise SpecError(f"aux_steps must be a positive integer, got {self.aux_steps!r}")
        if not self.aux_lr > 0:
            raise SpecError(f"aux_lr must be > 0, got {self.aux_lr!r}")


@dataclass(frozen=True)
class EncoderLayout:
    """An autoencoder's network apart from its two ends (the observation and latent dims).

    ``kind``: ``mlp`` (``widths`` are the hidden widths) or ``conv`` (observations are images of
    ``image_shape`` ``(C, H, W)``, flattened row-major; ``widths`` are the channels of its stride-2 stages, so
    ``H`` and ``W`` must be divisible by ``2 ** len(widths)``). ``kl > 0`` makes it a KL-regularised
    (variational) autoencoder: the encoder gives a Gaussian ``q(y | o)``, training adds ``kl * KL(q || N(0, I))``
    and decodes a sample, and :meth:`~pipeline.method.autoencoder.Autoencoder.encode` gives its mean."""

    kind: str = "mlp"
    widths: tuple[int, ...] = (128, 128)
    image_shape: tuple[int, ...] | None = None
    kl: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.kind not in ENCODER_KINDS:
            raise SpecError(f"encoder kind must be one of {', '.join(ENCODER_KINDS)}, got {self.kind!r}")
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise SpecError(f"encoder widths must be positive integers, got {list(self.widths)}")
        if not (isinstance(self.kl, (int, float)) and math.isfinite(self.kl) and self.kl >= 0):
            raise SpecError(f"encoder kl must be a finite number >= 0, got {self.kl!r}")
        if self.kind == "mlp" and self.image_shape is not None:
            raise SpecError("encoder image_shape is for kind conv; an mlp encoder reads flat rows")
        if self.kind == "conv":
            shape = self.image_shape
            if shape is None or len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                                       for s in shape):
                raise SpecError(f"a conv encoder needs image_shape [channels, height, width], got {shape!r}")
            stride = 2 ** len(self.widths)
            if shape[1] % stride or shape[2] % stride:
                raise SpecError(f"a conv encoder with {len(self.widths)} stride-2 stages needs height and width "
                                 f"divisible by {stride}, got image_shape {list(shape)}")

    def to_dict(self) -> dict:
        """The settings, with the later additions (kind, image_shape, kl) only where they differ from an MLP
        autoencoder's: older checkpoints, training states and step names hold only ``widths``."""
        extra = {} if self.kind == "mlp" else {"kind": self.kind, "image_shape": list(self.image_shape)}
        return {"widths": list(self.widths), **extra, **({"kl": self.kl} if self.kl else {})}


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of an autoencoder: observation dim, latent dim (the prior's), and its network."""

    obs_dim: int
    latent_dim: int
    layout: EncoderLayout = EncoderLayout()

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.latent_dim < 1:
            raise SpecError(f"EncoderConfig needs positive dims, got {self}")
        if self.layout.kind == "conv" and math.prod(self.layout.image_shape) != self.obs_dim:
            raise SpecError(f"encoder image_shape {list(self.layout.image_shape)} holds "
                             f"{math.prod(self.layout.image_shape)} values per row, but the observations have "
                             f"{self.obs_dim} columns")

    def to_dict(self) -> dict:
        return {"obs_dim": self.obs_dim, "latent_dim": self.latent_dim, **self.layout.to_dict()}

    @classmethod
    def from_dict(cls, settings: dict) -> "EncoderConfig":
        """The inverse of :meth:`to_dict` (also of an older checkpoint's, which holds only ``widths``)."""
        layout = {k: v for k, v in settings.items() if k not in ("obs_dim", "latent_dim")}
        return cls(settings["obs_dim"], settings["latent_dim"], EncoderLayout(**layout))


@dataclass(frozen=True)
class AlignConfig:
    """Stage-2 settings: the alignment weight ``lam`` (lambda), ``draws`` (K), the optimiser, and the
    ``mode``: ``align`` (``L_align``) or ``match`` (distribution matching, with ``aux_steps`` and
    ``aux_lr`` for its auxiliary flow). The defaults are the measured ones on the wind farm
    (docs/measured.md): ``L_align`` at lambda 0.002 sits between 0.001 (kNN NLL proxy ~2 nats above the target's
    own, reconstruction 1.2-1.4x lambda = 0's) and 0.003 (~1.5 nats below); 0.01 already collapses
    the latents onto the prior's modes, and 1.0 costs ~45x in reconstruction."""

    lam: float = 0.002
    draws: int = 4
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    log_every: int = 100
    eval_points: int = 2000  # held-fixed rows on which the logged metrics are measured
    mode: str = "align"
    aux_steps: int = MatchConfig.aux_steps
    aux_lr: float = MatchConfig.aux_lr

    def __post_init__(self) -> None:
        if self.mode not in ALIGNMENT_MODES:
            raise SpecError(f"mode must be one of {', '.join(ALIGNMENT_MODES)}, got {self.mode!r}")
        self.match_config()  # validates aux_steps and aux_lr
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise SpecError(f"lambda must be a finite number >= 0, got {self.lam!r}")
        for name in ("draws", "steps", "batch_size", "log_every", "eval_points"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise SpecError(f"lr must be > 0, got {self.lr!r}")

    def match_config(self) -> MatchConfig:
        return MatchConfig(aux_steps=self.aux_steps, aux_lr=self.aux_lr)

    def to_dict(self) -> dict:
        return asdict(self)
