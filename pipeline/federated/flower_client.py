"""The site side of a federated fit as a Flower ``ClientApp``: each SuperNode runs it beside its site's data.

The SuperNode's node config names the site spec (``site-spec="/path/site.yaml"``, see
``flowprior federated join``); the ClientApp reads that spec's target rows with the SuperNode's own
credentials and answers the server's messages (:mod:`~pipeline.federated.wire`) with what
:mod:`~pipeline.federated.site` computes. No row, and no per-row value, is ever put in a reply.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from pipeline.errors import DataError
from pipeline.federated import wire
from pipeline.federated.site import SiteRows, local_update, site_metrics, site_seed
from pipeline.federated.spec import FederatedSpec, Privacy
from pipeline.sites.spec import load_site_spec

app = ClientApp()


def _site(msg: Message, context: Context) -> tuple[FederatedSpec, SiteRows]:
    """The run's spec and this site's rows (read again for every message: each runs in a fresh process)."""
    torch.set_num_threads(int(context.node_config.get("threads", 1)))
    spec = FederatedSpec.from_json(msg.content["config"]["spec"])
    rows = SiteRows.load(load_site_spec(str(context.node_config["site-spec"])), spec.heldout_fraction, spec.seed)
    return spec, rows


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``describe`` (the site's id, spec digest, fingerprint, columns, row counts) or ``moments``."""
    spec, rows = _site(msg, context)
    action = msg.content["config"]["action"]
    if action == wire.DESCRIBE:
        return Message(wire.reply(rows.site, description=ConfigRecord({"json": json.dumps(rows.description)})),
                       reply_to=msg)
    privacy = json.loads(msg.content["config"]["privacy"] or "null")
    moments = rows.moments(None if privacy is None else Privacy(**privacy))
    return Message(wire.reply(rows.site, moments=wire.moments_record(moments)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local steps from the global weights on this site's rows; replies with its weights and rows."""
    spec, rows = _site(msg, context)
    config = msg.content["config"]
    if rows.description["fingerprint"] != config["fingerprint"]:
        raise DataError(f"site {rows.site}: its data changed since the run began; it takes no part in this run")
    space = wire.space_of(msg.content)
    z = space.apply(torch.from_numpy(rows.train))  # (n, d1)
    shared = msg.content["optimiser"].to_torch_state_dict() if "optimiser" in msg.content else {}
    weights, loss, state = local_update(msg.content["arrays"].to_torch_state_dict(), spec.velocity(space.latent_dim),
                                        z, spec.fit, int(config["first-step"]), int(config["steps"]),
                                        int(config["batch-size"]), float(config["mu"]), shared,
                                        seed=site_seed(spec.seed, int(config["round"]), rows.site))
    metrics = MetricRecord({"num-examples": len(rows.train), "train-fm": loss})
    records = {"arrays": ArrayRecord(weights), "metrics": metrics}
    if config["share"]:
        records["optimiser"] = ArrayRecord(state)
    return Message(wire.reply(rows.site, **records), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The prior it is sent on this site's held-out rows: held-out FM, kNN NLL proxy, ... (means only)."""
    spec, rows = _site(msg, context)
    space = wire.space_of(msg.content)
    metrics = site_metrics(msg.content["arrays"].to_torch_state_dict(), spec.velocity(space.latent_dim), space,
                           rows.heldout, spec.seed)
    return Message(wire.reply(rows.site, metrics=MetricRecord({**metrics, "heldout_rows": len(rows.heldout)})),
                   reply_to=msg)
