"""What a site computes in a federated fit, on its own rows only (the ClientApp calls these; so does
:mod:`~pipeline.federated.local`). Nothing here sends anything: the caller decides what leaves the site.

    rows = SiteRows.load(site_spec, heldout_fraction=0.1)      # its target features, split by row hash
    rows.description                                           # what the server learns about the site
    rows.moments(privacy=None)                                 # Moments of its training rows (or noised)
    weights, loss, state = local_update(weights, velocity, space.apply(rows.train), fit, first_step, steps, batch)
    site_metrics(weights, velocity, space, rows.heldout, seed)   # held-out FM, kNN NLL proxy, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.split import split_indices
from pipeline.federated.privacy import private_moments
from pipeline.federated.rounds import OPTIMISER
from pipeline.federated.spec import Privacy
from pipeline.hashing import json_digest
from pipeline.method.checkpoint import load_optimiser, optimiser_tensors
from pipeline.method.configs import FitConfig, VelocityConfig
from pipeline.method.metrics import heldout_fm, heldout_metrics
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace
from pipeline.method.training import make_optimiser, random_batches, train_step
from pipeline.method.velocity import VelocityMLP
from pipeline.sites.spec import SiteSpec


def spec_digest(spec: SiteSpec) -> str:
    """SHA-256 of the site spec's settings (not the path of its YAML, which differs between machines)."""
    return json_digest({k: v for k, v in spec.to_dict().items() if k != "path"})


@dataclass(frozen=True)
class SiteRows:
    """A site's target features, split into training and held-out rows, and what it says about them."""

    site: str
    train: np.ndarray  # (n, d2) float32
    heldout: np.ndarray  # (m, d2) float32
    description: dict  # site, spec_sha256, fingerprint, columns, dtypes, train_rows, heldout_rows, description

    @classmethod
    def load(cls, spec: SiteSpec, heldout_fraction: float, seed: int = 0) -> "SiteRows":
        """Read ``spec.target`` (the rows the site's prior should follow) and split them by row hash."""
        scan = spec.target.scan()
        features = spec.target.read(scan)
        train, held = split_indices(features.values, heldout_fraction, seed)
        description = {"site": spec.site, "spec_sha256": spec_digest(spec), "fingerprint": features.fingerprint,
                       "columns": list(features.columns), "dtypes": list(features.dtypes),
                       "train_rows": int(len(train)), "heldout_rows": int(len(held)),
                       "description": spec.description or ""}
        return cls(spec.site, features.values[train], features.values[held], description)

    @classmethod
    def of(cls, site: str, x: np.ndarray, heldout_fraction: float, seed: int = 0, columns: list[str] | None = None,
           fingerprint: str | None = None) -> "SiteRows":
        """A site from rows in memory (``x`` ``(n, d2)``), for tests and benchmarks."""
        x = np.asarray(x, dtype=np.float32)
        train, held = split_indices(x, heldout_fraction, seed)
        columns = columns or [f"x{j}" for j in range(x.shape[1])]
        description = {"site": site, "spec_sha256": json_digest(site), "fingerprint": fingerprint or json_digest(
                       [site, int(len(x))]), "columns": columns, "dtypes": ["float"] * len(columns),
                       "train_rows": int(len(train)), "heldout_rows": int(len(held)), "description": ""}
        return cls(site, x[train], x[held], description)

    def moments(self, privacy: Privacy | None = None) -> Moments:
        """The training rows' exact moments, or ``privacy``'s noised ones (:mod:`pipeline.federated.privacy`),
        drawn from the OS's entropy: noise that anyone could draw again from a known seed would protect nothing."""
        if privacy is None:
            return Moments.of(self.train)
        return private_moments(self.train, privacy, np.random.default_rng())


def site_seed(seed: int, round: int, site: str) -> int:
    """The seed of ``site``'s draws in ``round`` (batches, noise, times): the same in every process."""
    return int(json_digest([seed, round, site])[:8], 16)


def local_update(weights: dict[str, torch.Tensor], velocity: VelocityConfig, z: torch.Tensor, fit: FitConfig,
                 first_step: int, steps: int, batch_size: int, mu: float = 0.0,
                 optimiser: dict[str, torch.Tensor] | None = None,
                 seed: int = 0) -> tuple[dict[str, torch.Tensor], float, dict[str, torch.Tensor]]:
    """Steps ``first_step .. first_step + steps - 1`` of the global schedule (``fit.lr_at``) on prior-space rows
    ``z`` ``(n, d1)`` from the global weights ``w_g``; returns the site's weights, its mean ``L_FM`` over the
    steps and its AdamW state (``checkpoint.optimiser_tensors``'s tensors).

    AdamW continues ``optimiser`` (the global state) if given, else starts fresh; each step minimises
    ``L_FM + mu/2 |w - w_g|^2`` (FedProx's proximal term if ``mu``) with the pooled fit's clipping.
    """
    model = _model(weights, velocity)
    anchor = [p.detach().clone() for p in model.parameters()]

    def proximal(m: torch.nn.Module) -> torch.Tensor:
        return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(m.parameters(), anchor, strict=True))

    adamw = make_optimiser(model, fit)
    if optimiser:
        load_optimiser(adamw, optimiser, OPTIMISER, adamw.state_dict()["param_groups"])
    generator = torch.Generator().manual_seed(seed)
    batches = random_batches(z, batch_size, generator)
    model.train()
    losses = [train_step(model, adamw, None, next(batches), step, fit, generator, proximal if mu else None)
              for step in range(first_step, first_step + steps)]
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, float(torch.stack(losses).mean()), optimiser_tensors(adamw, OPTIMISER)[0]


def site_metrics(weights: dict[str, torch.Tensor], velocity: VelocityConfig, space: PriorSpace,
                 heldout: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The prior ``(weights, space)`` on the site's held-out rows ``(m, d2)``, as the pooled fit measures its own
    (:func:`~pipeline.method.metrics.heldout_metrics`: held-out FM, sliced W2, kNN NLL proxies): means over
    rows and samples, no per-row value."""
    return heldout_metrics(_model(weights, velocity), space.apply(torch.from_numpy(heldout)), seed)


def site_heldout_fm(weights: dict[str, torch.Tensor], velocity: VelocityConfig, space: PriorSpace,
                    heldout: np.ndarray, seed: int = 0) -> float:
    """The held-out flow-matching loss (:func:`~pipeline.method.metrics.heldout_fm`) of the prior
    ``(weights, space)`` on the site's rows ``heldout`` ``(m, d2)``, as the pooled fit measures its own."""
    with torch.no_grad():
        return heldout_fm(_model(weights, velocity), space.apply(torch.from_numpy(heldout)), seed)


def _model(weights: dict[str, torch.Tensor], velocity: VelocityConfig) -> VelocityMLP:
    with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: leave the caller's RNG alone
        model = VelocityMLP(velocity)
    model.load_state_dict(weights)
    return model.eval()
