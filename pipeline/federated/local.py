"""The sites as in-process calls: the federated run without a network, for tests and benchmarks.

    link = LocalSites({"R80711": SiteRows.of("R80711", x_a, 0.1), ...}, spec)
    record = fit_federated(link, spec, store)

Each call does exactly what a site's ClientApp does (:mod:`pipeline.federated.site`); the bytes counted
are the payloads a network would carry (the weights both ways, the moments), not Flower's framing.
``absent`` names sites that do not answer (as a SuperNode that is down), so dropouts can be tested.
"""

from __future__ import annotations

import torch

from pipeline.federated.server import Instructions, Update
from pipeline.federated.site import SiteRows, local_update, site_metrics, site_seed
from pipeline.federated.spec import FederatedSpec, Privacy
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace


def payload_bytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


class LocalSites:
    """:class:`~pipeline.federated.server.Sites` over ``rows`` in this process."""

    def __init__(self, rows: dict[str, SiteRows], spec: FederatedSpec) -> None:
        self.rows = rows
        self.spec = spec
        self.absent: set[str] = set()
        self.bytes_exchanged = 0

    def _here(self, sites) -> list[str]:
        return [s for s in sites if s in self.rows and s not in self.absent]

    def describe(self, sites: tuple[str, ...], timeout: float) -> dict[str, dict]:
        return {s: self.rows[s].description for s in self._here(sites)}

    def moments(self, sites: list[str], privacy: Privacy | None) -> dict[str, Moments]:
        out = {s: self.rows[s].moments(privacy) for s in self._here(sites)}
        self.bytes_exchanged += sum(8 * (1 + m.dim + m.dim ** 2) for m in out.values())
        return out

    def train(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
              instructions: Instructions) -> dict[str, Update]:
        out = {}
        for s in self._here(sites):
            z = space.apply(torch.from_numpy(self.rows[s].train))  # (n, d1)
            new, loss, state = local_update(weights, self.spec.velocity(space.latent_dim), z, self.spec.fit,
                                            instructions.first_step, instructions.steps, instructions.batch_size,
                                            instructions.mu, instructions.optimiser,
                                            seed=site_seed(self.spec.seed, instructions.round, s))
            shared = instructions.optimiser is not None
            out[s] = Update(new, len(self.rows[s].train), loss, state if shared else {})
            self.bytes_exchanged += 2 * payload_bytes(weights) + payload_bytes(instructions.optimiser or {}) + (
                payload_bytes(state) if shared else 0)
        return out

    def evaluate(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
                 seed: int) -> dict[str, dict[str, float]]:
        velocity = self.spec.velocity(space.latent_dim)
        return {s: {**site_metrics(weights, velocity, space, self.rows[s].heldout, seed),
                    "heldout_rows": len(self.rows[s].heldout)} for s in self._here(sites)}
