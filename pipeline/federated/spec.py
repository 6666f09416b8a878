"""What a federated core-prior fit is asked for (:class:`FederatedSpec`), without torch or Flower: the CLI
builds it from flags, the ServerApp reads it back from the run's config (JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from pipeline.errors import SpecError
from pipeline.method.configs import NORMALISERS, PROJECTIONS, FitConfig, VelocityConfig
from pipeline.storage import validate_name
from pipeline.storage.names import fresh_run_name

STRATEGIES = ("fedavg", "fedprox")
"""How the server combines the sites' work: both average the sites' weights by rows (FedAvg, McMahan et al.,
2017); ``fedprox`` also adds ``mu/2 |w - w_global|^2`` to each site's local loss (Li et al., 2020). With
``share_optimiser`` (the default) each site continues the global AdamW state (its moment estimates, averaged by
rows like the weights) instead of starting a fresh AdamW every round: on sites that differ strongly a fresh
optimiser's first steps follow each site's own gradient signs and the average drifts from the pooled fit
(benchmarks/federated.py; docs/measured.md, "Federated core prior vs the pooled one")."""


@dataclass(frozen=True)
class Privacy:
    """Gaussian noise on each site's moments: ``(epsilon, delta)``-DP per site for the rows' moments
    (each row clipped to L2 norm ``clip`` first). See :mod:`pipeline.federated.privacy`."""

    epsilon: float
    delta: float = 1e-6
    clip: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 1:
            raise SpecError(f"--dp-epsilon must be in (0, 1] (the classical Gaussian mechanism), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise SpecError(f"--dp-delta must be in (0, 1), got {self.delta}")
        if not self.clip > 0:
            raise SpecError(f"--dp-clip must be > 0, got {self.clip}")

@dataclass(frozen=True)
class FederatedSpec:
    """The sites, the rounds, the model and its optimiser. ``batch_size`` is the global batch of one local
    step, split evenly over the sites; ``rounds x local_steps`` steps in all, so a federated fit and a
    pooled fit of ``steps = rounds x local_steps`` at the same batch see the same number of samples."""

    sites: tuple[str, ...]  # the site ids that take part; round 1 waits until each has described itself
    name: str | None = None  # the run name: a rerun of the same name resumes from its last checkpoint
    rounds: int = 400  # x local_steps = the pooled demo core's 2,000 steps
    local_steps: int = 5  # ~1% off the pooled fit on sites alike, 2.5% on sites that differ strongly (1.9% at 1)
    strategy: str = "fedavg"
    mu: float = 0.01  # FedProx's proximal weight (fedprox only)
    share_optimiser: bool = True  # sites continue the global AdamW state (sent both ways beside the weights)
    min_sites: int | None = None  # a round counts with this many sites' updates; default: all but one
    fit: FitConfig = FitConfig(steps=2000)  # lr schedule, batch_size, clipping, EMA; its steps are set from rounds
    latent_dim: int | None = None
    projection: str | None = None
    normaliser: str = "global"
    width: int = 256
    depth: int = 4
    heldout_fraction: float = 0.1  # each site holds out rows by row hash (pipeline.data.split), as the pooled fit
    privacy: Privacy | None = None
    round_timeout: float = 600.0  # seconds the server waits for a round's replies
    join_timeout: float = 600.0  # seconds to wait for every site to connect before round 1
    retries: int = 3  # a round with fewer than min_sites replies is tried again this often, then the run stops
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sites:
            raise SpecError("--sites: name at least one site")
        for site in self.sites:
            validate_name(site, "site id")
        if len(set(self.sites)) != len(self.sites):
            raise SpecError(f"--sites names a site twice: {', '.join(self.sites)}")
        if self.name is not None:
            validate_name(self.name, "run name")
        if self.strategy not in STRATEGIES:
            raise SpecError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise SpecError(f"unknown projection {self.projection!r}; choose one of {', '.join(PROJECTIONS)}")
        if self.normaliser not in NORMALISERS:
            raise SpecError(f"unknown normaliser {self.normaliser!r}; choose one of {', '.join(NORMALISERS)}")
        for name in ("rounds", "local_steps", "width", "depth", "retries"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_sites_needed <= len(self.sites):
            raise SpecError(f"min_sites must be between 1 and the {len(self.sites)} sites, got {self.min_sites}")
        if self.mu < 0 or not 0 < self.heldout_fraction < 0.5:
            raise SpecError(f"mu must be >= 0 and heldout_fraction in (0, 0.5), got {self.mu}, {self.heldout_fraction}")
        if self.round_timeout <= 0 or self.join_timeout <= 0:
            raise SpecError("round_timeout and join_timeout must be > 0 seconds")
        if self.fit.steps != self.rounds * self.local_steps:
            object.__setattr__(self, "fit", replace(self.fit, steps=self.rounds * self.local_steps))

    @property
    def min_sites_needed(self) -> int:
        return self.min_sites if self.min_sites is not None else max(1, len(self.sites) - 1)

    @property
    def site_batch(self) -> int:
        """Each site's batch in a local step: the global batch split over the sites."""
        return max(1, math.ceil(self.fit.batch_size / len(self.sites)))

    @property
    def proximal_mu(self) -> float:
        return self.mu if self.strategy == "fedprox" else 0.0

    def velocity(self, latent_dim: int) -> VelocityConfig:
        return VelocityConfig(dim=latent_dim, width=self.width, depth=self.depth)

    def with_name(self) -> "FederatedSpec":
        """This spec with a run name (a fresh unique one if none was given)."""
        if self.name:
            return self
        return replace(self, name=fresh_run_name("federated"))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FederatedSpec":
        """The spec :meth:`to_json` wrote (the ServerApp's run config carries it)."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"federated spec: unknown key {unknown[0]!r}")
        data["sites"] = tuple(data["sites"])
        data["fit"] = FitConfig(**data["fit"])
        data["privacy"] = Privacy(**data["privacy"]) if data.get("privacy") else None
        return cls(**data)

def run_settings(spec: FederatedSpec) -> dict:
    """What makes two runs of one name the same run: every setting but the name and the waiting times."""
    return {k: v for k, v in spec.to_dict().items() if k not in ("name", "round_timeout", "join_timeout", "retries")}
