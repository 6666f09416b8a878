"""What the federated messages hold, as Flower records: one place for the keys both apps read.

Every message to a site carries the run's spec (JSON, ``config["spec"]``); a ``query`` names its ``action``
(``describe`` or ``moments``); ``train`` and ``evaluate`` carry the global weights (``arrays``) and the map
to prior space (``space``). Replies carry the site's id (``config["site"]``) beside their content.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace

DESCRIBE, MOMENTS = "describe", "moments"


def request(spec_json: str, **config: object) -> RecordDict:
    """A message's content: the spec and ``config`` (an action, the round's instructions)."""
    return RecordDict({"config": ConfigRecord({"spec": spec_json, **config})})


def with_model(content: RecordDict, weights: dict[str, torch.Tensor], space: PriorSpace) -> RecordDict:
    """``content`` plus the global weights and the map to prior space (``train``/``evaluate``)."""
    content["arrays"] = ArrayRecord(weights)
    content["space"] = ArrayRecord(space.tensors())
    content["space-settings"] = ConfigRecord({"json": json.dumps(space.settings())})
    return content


def space_of(content: RecordDict) -> PriorSpace:
    return PriorSpace.from_saved(content["space"].to_torch_state_dict(),
                                 json.loads(content["space-settings"]["json"]))


def moments_record(moments: Moments) -> ArrayRecord:
    return ArrayRecord({"n": torch.tensor([moments.n], dtype=torch.float64), "mean": torch.from_numpy(moments.mean),
                        "m2": torch.from_numpy(moments.m2)})


def moments_of(record: ArrayRecord) -> Moments:
    tensors = record.to_torch_state_dict()
    return Moments(int(tensors["n"][0]), tensors["mean"].numpy().astype(np.float64),
                   tensors["m2"].numpy().astype(np.float64))


def reply(site: str, **records: ArrayRecord | MetricRecord | ConfigRecord) -> RecordDict:
    """A site's reply: its id and ``records``."""
    return RecordDict({"site": ConfigRecord({"site": site}), **records})


def payload_bytes(content: RecordDict) -> int:
    """The bytes a message's arrays and strings hold (Flower's framing aside): what the run counts as exchanged."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        else:
            total += sum(len(v) if isinstance(v, (str, bytes)) else 8 * (len(v) if isinstance(v, list) else 1)
                         for v in record.values())
    return total
