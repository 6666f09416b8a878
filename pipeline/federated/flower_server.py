"""The server side of a federated fit as a Flower ``ServerApp`` (run by the SuperLink, started by
``flowprior federated fit``), and :class:`FlowerSites`, the run's link to the SuperNodes over Flower's grid.

The run config holds the spec (``spec``, JSON) and the registry (``registry``, a path or ``s3://`` URI, opened
with the SuperLink's own credentials, which need no access to any site's data).
"""

from __future__ import annotations

import json
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from pipeline.federated import wire
from pipeline.federated.server import Instructions, Say, Update, fit_federated
from pipeline.federated.spec import FederatedSpec, Privacy
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace
from pipeline.storage import Store

POLL = 1.0  # seconds between looks for SuperNodes that have not described themselves yet
DESCRIBE_TIMEOUT = 120.0  # seconds a SuperNode may take to read its rows and describe them

app = ServerApp()


class FlowerSites:
    """:class:`~pipeline.federated.server.Sites` over Flower's grid: messages to the SuperNodes that serve the
    run's sites. A SuperNode is known by the site it describes; one that reconnects (a new node id) is
    described again before the next round and then serves its site."""

    def __init__(self, grid: Grid, spec: FederatedSpec, say: Say = print) -> None:
        self.grid = grid
        self.say = say
        self.spec = spec
        self.spec_json = spec.to_json()
        self.nodes: dict[str, int] = {}  # site -> node id
        self.seen: set[int] = set()  # node ids that answered a request to describe themselves (or failed it)
        self.answered: set[int] = set()  # node ids that replied to anything, with content or an error
        self.descriptions: dict[str, dict] = {}
        self.bytes_exchanged = 0

    def _exchange(self, messages: list[Message], timeout: float) -> dict[str, Message]:
        """Send ``messages``, count the bytes both ways, return the replies without an error, by site."""
        self.bytes_exchanged += sum(wire.payload_bytes(m.content) for m in messages)
        out = {}
        for r in self.grid.send_and_receive(messages, timeout=timeout):
            self.answered.add(r.metadata.src_node_id)
            if r.has_error():
                self.say(f"[federated] node {r.metadata.src_node_id} failed: {r.error.reason}")
                continue
            self.bytes_exchanged += wire.payload_bytes(r.content)
            out[r.content["site"]["site"]] = r
        return out

    def _discover(self, timeout: float) -> None:
        """Ask every SuperNode not seen before which site it serves (one that did not answer is asked again)."""
        new = [n for n in self.grid.get_node_ids() if n not in self.seen]
        if not new:
            return
        messages = [Message(wire.request(self.spec_json, action=wire.DESCRIBE), message_type=MessageType.QUERY,
                            dst_node_id=n) for n in new]
        replies = self._exchange(messages, timeout)
        self.seen.update(n for n in new if n in self.answered)
        for site, r in replies.items():
            if site not in self.spec.sites:
                self.say(f"[federated] node {r.metadata.src_node_id} serves site {site}, which this run does not "
                         f"include; ignored")
                continue
            self.nodes[site] = r.metadata.src_node_id
            self.descriptions[site] = json.loads(r.content["description"]["json"])

    def describe(self, sites: tuple[str, ...], timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while not set(sites) <= set(self.nodes) and time.monotonic() < deadline:
            self._discover(min(DESCRIBE_TIMEOUT, max(1.0, deadline - time.monotonic())))
            time.sleep(POLL)
        return {s: self.descriptions[s] for s in sites if s in self.descriptions}

    def _send(self, sites: list[str], message_type: str, content, timeout: float) -> dict[str, Message]:
        self._discover(DESCRIBE_TIMEOUT)
        messages = [Message(content(s), message_type=message_type, dst_node_id=self.nodes[s])
                    for s in sites if s in self.nodes]
        return self._exchange(messages, timeout)

    def moments(self, sites: list[str], privacy: Privacy | None) -> dict[str, Moments]:
        privacy_json = json.dumps(None if privacy is None else self.spec.to_dict()["privacy"])
        replies = self._send(sites, MessageType.QUERY, lambda s: wire.request(
            self.spec_json, action=wire.MOMENTS, privacy=privacy_json), self.spec.round_timeout)
        return {s: wire.moments_of(r.content["moments"]) for s, r in replies.items()}

    def train(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
              instructions: Instructions) -> dict[str, Update]:
        def content(site: str):
            content = wire.with_model(wire.request(
                self.spec_json, round=instructions.round, **{"first-step": instructions.first_step},
                steps=instructions.steps, **{"batch-size": instructions.batch_size}, mu=instructions.mu,
                fingerprint=instructions.fingerprints[site], share=instructions.optimiser is not None), weights, space)
            if instructions.optimiser:
                content["optimiser"] = ArrayRecord(instructions.optimiser)
            return content

        replies = self._send(sites, MessageType.TRAIN, content, self.spec.round_timeout)
        return {s: Update(r.content["arrays"].to_torch_state_dict(), int(r.content["metrics"]["num-examples"]),
                          float(r.content["metrics"]["train-fm"]),
                          r.content["optimiser"].to_torch_state_dict() if "optimiser" in r.content else {})
                for s, r in replies.items()}

    def evaluate(self, sites: list[str], weights: dict[str, torch.Tensor], space: PriorSpace,
                 seed: int) -> dict[str, dict[str, float]]:
        replies = self._send(sites, MessageType.EVALUATE, lambda s: wire.with_model(wire.request(self.spec_json),
                                                                                    weights, space),
                             self.spec.round_timeout)
        return {s: {k: float(v) for k, v in r.content["metrics"].items()} for s, r in replies.items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The run: the spec and the registry from the run config, then :func:`fit_federated`."""
    spec = FederatedSpec.from_json(str(context.run_config["spec"]))
    store = Store.open(str(context.run_config["registry"]))
    fit_federated(FlowerSites(grid, spec), spec, store, say=print,
                  make_current=bool(context.run_config.get("make-current", True)))
