"""A sweep's spec (``tuning/<name>.yaml``): which sites, what to search, how to stop early, what to choose.

    name: lambda                                   # default: the file name
    sites: [../sites/R80711.yaml, ../sites/R80721.yaml]   # site specs, relative to this file
    space:                                         # each: {grid: [...]}, {choice: [...]} or {loguniform: [lo, hi]}
      lambda: {grid: [0.001, 0.003, 0.01, 0.03, 0.1]}
      lr: {grid: [0.001]}                          # default: each site spec's alignment.lr
      draws: {choice: [2, 4, 8]}                   # K; default: each site spec's alignment.draws
      mode: {grid: [align, match]}                 # L_align or distribution matching; default: the site spec's
    samples: 1                                     # Tune num_samples: grid repeats / random draws per site
    steps: 1500                                    # per trial; default: the site specs' alignment.steps
    epoch_steps: 100                               # steps per reported epoch (early stopping's time unit)
    scheduler: {type: forecast, grace_epochs: 1}   # or {type: asha, grace_epochs: 1, reduction_factor: 3}, {type: fifo}
    resources: {cpu: 1, gpu: 0}                    # per trial (gpu: 0.25 packs four trials per GPU)
    max_concurrent: 0                              # 0: as many trials as the cluster holds
    select: {metric: nll_gap, recon: median, recon_tolerance: 2.0, penalty: 10}   # the defaults (sweeps.objective)

Every trial trains one site's encoder; each site also gets one lambda = 0 baseline run (its
reconstruction error is what ``recon_tolerance`` is relative to). Trials start in the order the
grid lists its values (first dimension slowest), the sites interleaved; each site's first trial
runs to the end and sets early stopping's bar, so list grid values coarse-to-fine, best guess first. The latent
dimension is not a sweep dimension here: it is fixed by the prior each site aligns to. Loading validates everything
once; errors are ``SpecError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SpecError
from pipeline.method.configs import ALIGNMENT_MODES
from pipeline.sites.spec import SiteSpec, load_site_spec
from pipeline.specs import read_mapping, resolve, section, typed
from pipeline.storage import validate_name
from pipeline.sweeps.objective import Selection

DIMENSIONS = {"lambda": "lam", "lr": "lr", "draws": "draws", "mode": "mode"}  # YAML name -> AlignConfig field
SWEPT = tuple(DIMENSIONS.values())  # the AlignConfig fields a trial's settings may set
NOT_SWEPT = {"latent_dim": "the latent dimension is fixed by the prior each site aligns to",
             "projection": "the projection belongs to the prior each site aligns to, not to its encoder"}
SAMPLERS = ("grid", "choice", "loguniform")
SCHEDULERS = ("forecast", "asha", "fifo")
KEYS = frozenset({"name", "sites", "space", "samples", "steps", "epoch_steps", "scheduler", "resources",
                  "max_concurrent", "select"})  # a sweep spec's top-level keys


@dataclass(frozen=True)
class Dimension:
    """One searched setting: ``grid`` (every value, in order), ``choice`` (uniform draws) or
    ``loguniform`` (``values`` = (low, high))."""

    name: str  # lambda | lr | draws | mode
    sampler: str
    values: tuple

    def __post_init__(self) -> None:
        if self.name not in DIMENSIONS:
            raise SpecError(f"unknown dimension {self.name!r} (known: {', '.join(DIMENSIONS)})")
        if self.sampler not in SAMPLERS:
            raise SpecError(f"unknown sampler {self.sampler!r} (known: {', '.join(SAMPLERS)})")
        if self.sampler == "loguniform":
            if self.name in ("draws", "mode"):
                raise SpecError(f"{self.name} is not a number range: use grid or choice")
            low, high = self.values if len(self.values) == 2 else (0, 0)
            if not (0 < low < high and math.isfinite(high)):
                raise SpecError(f"loguniform needs [low, high] with 0 < low < high, got {list(self.values)}")
        elif not self.values:
            raise SpecError(f"{self.sampler} needs at least one value")
        if self.name == "mode" and not set(self.values) <= set(ALIGNMENT_MODES):
            raise SpecError(f"mode values must be among {', '.join(ALIGNMENT_MODES)}, got {list(self.values)}")

    @property
    def field(self) -> str:
        return DIMENSIONS[self.name]

    def to_tune(self):
        """The Tune domain a sampled dimension draws from (grids become the sweep's list of points)."""
        from ray import tune

        if self.sampler == "grid":
            raise SpecError(f"{self.name}: a grid is not sampled")
        if self.sampler == "choice":
            return tune.choice(list(self.values))
        return tune.loguniform(*self.values)


@dataclass(frozen=True)
class Scheduler:
    """``forecast``: from epoch grace_epochs on, a trial stops once its final score, forecast from its own site's
    finished trials, is worse than the best of them (``pipeline.sweeps.forecast``; reduction_factor unused);
    ``asha``: a trial stops at a rung (grace_epochs x reduction_factor^k epochs) unless its objective is in the
    best 1/reduction_factor of its own site's trials there; ``fifo``: every trial runs to the end."""

    type: str = "forecast"
    grace_epochs: int = 1
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.type not in SCHEDULERS:
            raise SpecError(f"type must be one of {', '.join(SCHEDULERS)}, got {self.type!r}")
        if self.grace_epochs < 1 or not self.reduction_factor > 1:
            raise SpecError(f"grace_epochs must be >= 1 and reduction_factor > 1, got {self}")


@dataclass(frozen=True)
class Resources:
    """Per trial: CPUs (and torch threads), and a share of a GPU (0.25: four trials per GPU; the trial
    then trains on its GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpu > 0:
            raise SpecError(f"cpu must be > 0, got {self.cpu}")
        if not 0 <= self.gpu <= 1:
            raise SpecError(f"gpu is a share of one GPU per trial, in [0, 1]; got {self.gpu}")

    def shape(self, gpu: float | None = None) -> dict[str, float]:
        """One trial's request in Ray's resource names (``gpu``: this share instead of the spec's)."""
        gpu = self.gpu if gpu is None else gpu
        return {"CPU": self.cpu, **({"GPU": gpu} if gpu else {})}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    sites: tuple[SiteSpec, ...]
    space: tuple[Dimension, ...]
    steps: int
    samples: int = 1
    epoch_steps: int = 100
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_concurrent: int = 0
    select: Selection = Selection()
    path: str | None = None

    @property
    def epochs(self) -> int:
        """Reports per trial (the last may cover fewer than ``epoch_steps`` steps)."""
        return math.ceil(self.steps / self.epoch_steps)

    def to_dict(self) -> dict:
        """JSON-able settings (the site specs by path): what the registry keeps and the name digests."""
        out = dataclasses.asdict(self)
        out["sites"] = {s.site: s.path for s in self.sites}
        out["space"] = {d.name: {d.sampler: list(d.values)} for d in self.space}
        return out


def _dimension(name: object, value: object, where: str) -> Dimension:
    if name in NOT_SWEPT:
        raise SpecError(f"{where}.{name}: not a sweep dimension: {NOT_SWEPT[name]}")
    if name not in DIMENSIONS:
        raise SpecError(f"{where}: unknown dimension {name!r} (known: {', '.join(DIMENSIONS)})")
    if not isinstance(value, dict) or len(value) != 1:
        raise SpecError(f"{where}.{name}: expected one of {{grid: [...]}}, {{choice: [...]}}, "
                        f"{{loguniform: [low, high]}}, got {value!r}")
    (sampler, values), = value.items()
    kind = {"draws": "int", "mode": "str"}.get(name, "float")
    values = typed(values, f"tuple[{kind}, ...]", f"{where}.{name}.{sampler}")
    try:
        return Dimension(name, sampler, values)
    except ValueError as error:
        raise SpecError(f"{where}.{name}: {error}") from None


def load_sweep_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate ``path`` and the site specs it names (see the module docstring)."""
    path = Path(path)
    data = read_mapping(path, "sweep spec")
    top = KEYS
    unknown = sorted(set(data) - top)
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(top))})")
    for key in ("sites", "space"):
        if key not in data:
            raise SpecError(f"{path}: missing key {key!r}")
    name = typed(data.get("name", path.stem), "str", f"{path}: name")
    try:
        validate_name(name, "sweep name")
    except ValueError as error:
        raise SpecError(f"{path}: name: {error}") from None

    sites = []
    for i, site_path in enumerate(typed(data["sites"], "tuple[str, ...]", f"{path}: sites")):
        try:
            sites.append(load_site_spec(resolve(site_path, path.parent)))
        except SpecError as error:
            raise SpecError(f"{path}: sites[{i}]: {error}") from None
    seen = [s.site for s in sites]
    if len(set(seen)) != len(seen):
        raise SpecError(f"{path}: sites: site {next(s for s in seen if seen.count(s) > 1)!r} is listed twice")

    space = data["space"]
    if not isinstance(space, dict) or not space:
        raise SpecError(f"{path}: space: expected a mapping of dimensions, got {space!r}")
    dimensions = tuple(_dimension(k, v, f"{path}: space") for k, v in space.items())
    for dimension in dimensions:  # every value must make a valid alignment setting for every site
        for value in (dimension.values if dimension.sampler != "loguniform" else ()):
            try:
                dataclasses.replace(sites[0].alignment, **{dimension.field: value})
            except ValueError as error:
                raise SpecError(f"{path}: space.{dimension.name}: {error}") from None

    if "steps" in data:
        steps = typed(data["steps"], "int", f"{path}: steps")
    else:
        distinct = sorted({s.alignment.steps for s in sites})
        if len(distinct) > 1:
            raise SpecError(f"{path}: steps: the sites' alignment.steps differ ({distinct}); set steps for the sweep")
        steps = distinct[0]
    settings = {key: typed(data[key], "int", f"{path}: {key}")
                for key in ("samples", "epoch_steps", "max_concurrent") if key in data}
    for key, low in (("steps", 1), ("samples", 1), ("epoch_steps", 1), ("max_concurrent", 0)):
        value = steps if key == "steps" else settings.get(key, low)
        if value < low:
            raise SpecError(f"{path}: {key}: must be >= {low}, got {value}")
    scheduler = section(Scheduler, data.get("scheduler", {}), f"{path}: scheduler")
    spec = SweepSpec(name=name, sites=tuple(sites), space=dimensions, steps=steps, **settings, scheduler=scheduler,
                     resources=section(Resources, data.get("resources", {}), f"{path}: resources"),
                     select=section(Selection, data.get("select", {}), f"{path}: select"), path=str(path))
    if scheduler.type != "fifo" and scheduler.grace_epochs > spec.epochs:
        raise SpecError(f"{path}: scheduler.grace_epochs: {scheduler.grace_epochs} exceeds the {spec.epochs} epochs "
                        f"of a trial ({steps} steps / epoch_steps {spec.epoch_steps})")
    return spec
