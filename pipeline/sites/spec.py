"""A site's spec (``sites/<site>.yaml``): its data, encoder, alignment and decision settings.

    site: R80711
    description: healthy 2015 operation           # one line: what this site is (reports show it)
    columns: [pitch, power, wind_speed, ...]      # feature columns, for both tables below
    target:                                       # what the site's latents should follow
      uri: ../pipeline/datasets/la_haute_borne.parquet   # relative to this file, or s3://...
      filters: {site: R80711, year: 2015, fault: false}   # or a range: wind_speed: {">": 1.0}
      drop_nonfinite: true
    observations:                                 # what the site's encoder encodes
      uri: ../pipeline/datasets/la_haute_borne.parquet
      filters: {site: R80711, year: 2015}
      drop_nonfinite: true
    encoder: {latent_dim: 4, widths: [128, 128]}  # or {kind: conv, image_shape: [1, 28, 28], widths: [16, 32]}
    alignment: {lambda: 0.002, draws: 4, steps: 1500, mode: align}   # the defaults; or mode: match
    finetune: {method: adapter, rank: 8, steps: 1000, lr: 0.0003}   # or method: full (every weight)
    thresholds: {finetune_gain: 0.03, refit_fm: 35}   # the defaults (in code)

Everything but ``site``, ``target`` and ``observations`` has defaults. Loading validates once, at
the edge: an unknown key, a wrong type or a bad value is a ``SpecError`` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import SpecError
from pipeline.method.configs import FINETUNE_METHODS, AdapterConfig, AlignConfig, EncoderLayout
from pipeline.specs import read_mapping, resolve, section, typed
from pipeline.storage import validate_name

KEYS = frozenset({"site", "description", "columns", "target", "observations", "encoder", "alignment", "finetune",
                  "thresholds", "seed"})  # a site spec's top-level keys
DECISIONS = ("reuse", "finetune", "refit")  # what a site check decides (pipeline.sites.decision)
SITE_PRIOR_MODES = ("finetune", "refit")  # how a site prior is trained (pipeline.sites.site_prior)


@dataclass(frozen=True)
class DataSource:
    """A Parquet table (file, folder or glob; local or s3://) and the rows and columns to use."""

    uri: str
    filters: dict = field(default_factory=dict)
    columns: tuple[str, ...] | None = None  # numeric feature columns (else feature_column / all numeric)
    feature_column: str = "features"
    drop_nonfinite: bool = False

    def read(self, scan=None):
        """The rows (``pipeline.data.Features``); from ``scan`` (a :meth:`scan` of this source) without listing
        and hashing the table again."""
        from pipeline.data.features import read_features, read_scanned

        if scan is not None:
            return read_scanned(scan)
        return read_features(self.uri, feature_column=self.feature_column, columns=self.columns,
                             filters=self.filters, drop_nonfinite=self.drop_nonfinite)

    def scan(self):
        """The table's listing and one footer (no rows decoded): its columns, types and fingerprint (local files
        are hashed whole, see ``pipeline.data.fingerprint``)."""
        from pipeline.data.scan import scan_features

        return scan_features(self.uri, feature_column=self.feature_column, columns=self.columns,
                             filters=self.filters, drop_nonfinite=self.drop_nonfinite)


@dataclass(frozen=True)
class EncoderSettings:
    """The site's autoencoder: the latent dimension (the prior's) and its network
    (``pipeline.method.configs.EncoderLayout``): ``kind: mlp`` with hidden ``widths``, or ``kind: conv`` on images
    of ``image_shape: [channels, height, width]`` (the observations' feature column holds each image flattened
    row-major, or as a fixed-shape tensor) with ``widths`` the channels of its stride-2 stages; ``kl > 0`` makes
    it KL-regularised."""

    latent_dim: int | None = None  # must equal the prior's dimension; None: take the prior's
    kind: str = EncoderLayout.kind
    widths: tuple[int, ...] = EncoderLayout.widths
    image_shape: tuple[int, ...] | None = None
    kl: float = 0.0

    def __post_init__(self) -> None:
        if self.latent_dim is not None and self.latent_dim < 1:
            raise SpecError(f"latent_dim must be positive, got {self.latent_dim}")
        self.layout()  # validates the network

    def layout(self) -> EncoderLayout:
        return EncoderLayout(self.kind, self.widths, self.image_shape, self.kl)

    def to_dict(self) -> dict:
        """What an alignment's result depends on; an MLP autoencoder's as before conv encoders existed."""
        return {"latent_dim": self.latent_dim, **self.layout().to_dict()}


@dataclass(frozen=True)
class FinetuneSettings:
    """Site prior training: ``steps`` from the core's weights (finetune) or ``refit_steps`` from scratch;
    ``probe_steps`` of a fine-tune are what a site check tries (``sites.decision``), the way the fine-tune will.
    A fine-tune's ``method``: ``adapter`` trains a rank-``rank`` adapter of the frozen core and stores only it
    (``pipeline.method.adapter``), ``full`` trains and stores every weight; a refit is always whole. ``adapter`` is
    the default by measurement (``benchmarks/site_adapters.py``, docs/measured.md): at equal steps it keeps 94-100%
    of a full fine-tune's held-out FM gain on every wind-farm site the check sends to ``finetune``, and the check
    decides the same on all 20 sites with either probe; its artifact is 1.4% of the core's bytes at the paper's
    1024 x 6 (1,000 site priors: 2.0 GB instead of 140 GB) and a step there costs 0.64x a full one's."""

    method: str = FINETUNE_METHODS[0]
    rank: int = AdapterConfig.rank
    steps: int = 1000
    refit_steps: int = 3000
    probe_steps: int = 100
    lr: float = 3e-4  # finetune; a refit uses the core fit's lr
    batch_size: int = 256
    heldout_fraction: float = 0.1
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "refit_steps", "probe_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 < self.heldout_fraction < 0.5:
            raise SpecError(f"lr must be > 0 and heldout_fraction in (0, 0.5), got {self}")
        if self.method not in FINETUNE_METHODS:
            raise SpecError(f"method must be one of {', '.join(FINETUNE_METHODS)}, got {self.method!r}")
        AdapterConfig(rank=self.rank)  # validates the rank

    def adapter(self) -> AdapterConfig | None:
        """The adapter a fine-tune trains (``method: adapter``), or None: every weight (``full``)."""
        return AdapterConfig(rank=self.rank) if self.method == "adapter" else None


@dataclass(frozen=True)
class Thresholds:
    """When a site stops reusing the core prior: `refit` when `fm_ratio > refit_fm`, else `finetune` when
    a probe fine-tune gains more than `finetune_gain` of the held-out FM loss, else `reuse`
    (``pipeline.sites.decision``; the defaults are measured by ``benchmarks/site_decisions.py``)."""

    finetune_gain: float = 0.03
    refit_fm: float = 35.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SpecError(f"threshold {name} must be a finite number, got {value!r}")
        if not 0 <= self.finetune_gain < 1:
            raise SpecError(f"threshold finetune_gain is a fraction of the held-out FM loss, in [0, 1); "
                             f"got {self.finetune_gain}")
        if self.refit_fm <= 1:
            raise SpecError(f"threshold refit_fm must be > 1 (a ratio), got {self.refit_fm}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SiteSpec:
    site: str
    target: DataSource
    observations: DataSource
    encoder: EncoderSettings = EncoderSettings()
    alignment: AlignConfig = AlignConfig()
    finetune: FinetuneSettings = FinetuneSettings()
    thresholds: Thresholds = Thresholds()
    seed: int = 0
    path: str | None = None  # the YAML it came from
    description: str | None = None  # one line: what the site is

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def image_mismatch(self, dim: int, shape: tuple[int, ...] | None) -> str | None:
        """Why observations of ``dim`` values per row (each of ``shape``, for a tensor column) do not fit a conv
        encoder's ``image_shape``, or None (an MLP encoder reads any rows). Size-1 axes aside, the shapes agree:
        ``[1, 28, 28]`` reads a ``(28, 28)`` column, not a ``(28, 28, 3)`` one as ``[3, 28, 28]``."""
        if self.encoder.kind != "conv":
            return None
        image, source = list(self.encoder.image_shape), self.observations
        where = f"the observations ({source.uri}, column {source.feature_column!r})"
        if math.prod(image) != dim:
            return f"encoder.image_shape {image} holds {math.prod(image)} values per image, but {where} have {dim}"
        if shape is not None and [s for s in shape if s != 1] != [s for s in image if s != 1]:
            return (f"encoder.image_shape {image} is [channels, height, width], but {where} hold tensors of shape "
                    f"{list(shape)}; store images channels first")
        return None


def load_site_spec(path: str | os.PathLike) -> SiteSpec:
    """Read and validate ``path`` (see the module docstring)."""
    path = Path(path)
    data = read_mapping(path, "site spec")
    top = KEYS
    unknown = sorted(set(data) - top)
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(top))})")
    for key in ("site", "target", "observations"):
        if key not in data:
            raise SpecError(f"{path}: missing key {key!r}")
    site = typed(data["site"], "str", f"{path}: site")
    try:
        validate_name(site, "site id")
    except ValueError as error:
        raise SpecError(f"{path}: site: {error}") from None
    columns = typed(data["columns"], "tuple[str, ...]", f"{path}: columns") if "columns" in data else None
    sources = {}
    for key in ("target", "observations"):
        source = section(DataSource, data[key], f"{path}: {key}")
        source = dataclasses.replace(source, uri=resolve(source.uri, path.parent),
                                     columns=source.columns or columns)
        sources[key] = source
    return SiteSpec(
        site=site, target=sources["target"], observations=sources["observations"],
        encoder=section(EncoderSettings, data.get("encoder", {}), f"{path}: encoder"),
        alignment=section(AlignConfig, data.get("alignment", {}), f"{path}: alignment", renames={"lambda": "lam"}),
        finetune=section(FinetuneSettings, data.get("finetune", {}), f"{path}: finetune"),
        thresholds=section(Thresholds, data.get("thresholds", {}), f"{path}: thresholds"),
        seed=typed(data.get("seed", 0), "int", f"{path}: seed"), path=str(path),
        description=typed(data.get("description"), "str | None", f"{path}: description"))
