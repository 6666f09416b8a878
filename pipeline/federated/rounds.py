"""What the server computes in a federated fit, and its per-round checkpoints (no Flower, no Ray).

    columns, dtypes = agree_contract(descriptions)          # or a DataError naming the sites that differ
    merged = merge_moments(moments.values())                 # the pooled rows' Moments, from the sites' own
    w = weighted_average([(w_k, n_k), ...])                  # FedAvg: sum_k n_k w_k / sum_k n_k
    ema = ema_update(ema, w, decay=round_decay(fit, local_steps, done_steps))
    RoundCheckpoint(...).save(store, prefix); RoundCheckpoint.latest(store, prefix)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from pipeline.data.schema import FeatureSchema
from pipeline.errors import CheckpointError, DataError
from pipeline.hashing import json_digest
from pipeline.method.checkpoint import load_checkpoint, save_checkpoint
from pipeline.method.configs import FitConfig
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace
from pipeline.storage import Store

CHECKPOINT_KIND = "flowprior.federated-round/v1"
OPTIMISER = "adamw"  # the prefix of the shared AdamW state's tensors (``adamw.<index>.exp_avg``, ...)
CHECKPOINTS = "federated"  # the store's folder of federated runs: federated/<run>/round-00012.safetensors


def agree_contract(descriptions: dict[str, dict]) -> tuple[list[str], list[str]]:
    """The feature columns (and their Parquet types) every site holds, in order: the first site's (by id), if
    every other site's are the same; else a ``DataError`` that names each site whose columns differ and how."""
    first, *others = sorted(descriptions)
    reference = list(descriptions[first]["columns"])
    refused = [why for site in others if (why := _difference(site, list(descriptions[site]["columns"]), reference))]
    if refused:
        raise DataError(f"the sites' feature columns differ, so no one core prior can serve them; nothing was trained. "
                        f"Site {first} has {', '.join(reference)}; " + "; ".join(refused))
    return reference, list(descriptions[first]["dtypes"])


def _difference(site: str, columns: list[str], reference: list[str]) -> str | None:
    """How ``site``'s columns differ from ``reference``, or None."""
    if columns == reference:
        return None
    missing, extra = [c for c in reference if c not in columns], [c for c in columns if c not in reference]
    if missing or extra:
        return f"site {site} lacks {', '.join(missing) or 'none'} and has extra {', '.join(extra) or 'none'}"
    return f"site {site} has the same columns in another order ({', '.join(columns)})"


def merge_moments(moments: Iterable[Moments]) -> Moments:
    """The moments of every site's rows together (Chan et al.'s exact merge, in any order)."""
    merged = None
    for m in moments:
        merged = m if merged is None else merged.merge(m)
    if merged is None:
        raise ValueError("no site's moments to merge")
    return merged


def weighted_average(updates: list[tuple[dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """FedAvg's aggregate ``w = sum_k n_k w_k / sum_k n_k`` of ``(weights_k, n_k)`` (``n_k``: the site's rows)."""
    total = float(sum(n for _, n in updates))
    if not updates or total <= 0:
        raise ValueError("no updates with rows to average")
    return {name: sum(w[name].double() * (n / total) for w, n in updates).to(updates[0][0][name].dtype)
            for name in updates[0][0]}


def round_decay(fit: FitConfig, local_steps: int, steps_done: int) -> float:
    """The EMA decay of one round of ``local_steps`` steps: the pooled fit's per-step decay (with its warm-up,
    ``min(d, (1 + step) / (10 + step))``) compounded over the round, so both average over as many steps."""
    return min(fit.ema_decay, (1 + steps_done) / (10 + steps_done)) ** local_steps


def ema_update(ema: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], decay: float) -> dict[str, torch.Tensor]:
    """``ema <- decay ema + (1 - decay) w``: the global weights' moving average, which the registered prior keeps."""
    return {k: torch.lerp(ema[k], weights[k], 1 - decay) if ema[k].is_floating_point() else weights[k].clone()
            for k in weights}


def data_fingerprint(descriptions: dict[str, dict]) -> str:
    """One fingerprint of every site's data: a digest of the sites' own fingerprints, by site id."""
    return json_digest({site: d["fingerprint"] for site, d in sorted(descriptions.items())})


@dataclass(frozen=True)
class RoundCheckpoint:
    """The server's state after ``round`` rounds: the global and EMA weights, the map to prior space, the
    feature contract, the sites and the per-round history (sites taking part, bytes, losses)."""

    round: int
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    space: PriorSpace
    schema: FeatureSchema
    sites: dict[str, dict]  # site -> its description at round 0 (fingerprint, spec digest, rows, ...)
    history: list[dict]
    optimiser: dict[str, torch.Tensor] = field(default_factory=dict)  # the shared AdamW state (site.local_update)

    def save(self, store: Store, prefix: str) -> str:
        """Write ``<prefix>/round-<round>.safetensors`` (a new key per round: a crash leaves the last one whole)."""
        tensors = {**{f"weights.{k}": v for k, v in self.weights.items()},
                   **{f"ema.{k}": v for k, v in self.ema.items()},
                   **{f"space.{k}": v for k, v in self.space.tensors().items()}, **self.optimiser}
        config = {"round": self.round, "space": self.space.settings(), "schema": self.schema.to_dict(),
                  "sites": self.sites, "history": self.history}
        key = f"{prefix}/round-{self.round:05d}.safetensors"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "round.safetensors"
            save_checkpoint(path, CHECKPOINT_KIND, config, tensors)
            store.put_file(key, path)
        return key

    @classmethod
    def latest(cls, store: Store, prefix: str) -> "RoundCheckpoint | None":
        """The checkpoint of the last round under ``prefix``, or None before round 1 finished."""
        keys = [f"{prefix}/{name}" for name in store.list(prefix) if name.startswith("round-")]
        if not keys:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "round.safetensors"
            store.get_file(keys[-1], path)
            config, tensors = load_checkpoint(path, CHECKPOINT_KIND)
        part = {name: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
                for name in ("weights", "ema", "space")}
        try:
            return cls(config["round"], part["weights"], part["ema"], PriorSpace.from_saved(part["space"],
                       config["space"]), FeatureSchema.from_dict(config["schema"]), config["sites"], config["history"],
                       {k: v for k, v in tensors.items() if k.startswith(f"{OPTIMISER}.")})
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{store.uri_of(keys[-1])}: not a federated round checkpoint ({error})") from None
