"""A core prior fitted by sites that keep their rows: federated flow matching on Flower.

The platform team runs a Flower SuperLink and ``flowprior federated fit``; each site runs a SuperNode
beside its data (``flowprior federated join --site-spec ...``). What crosses the network (docs/fleet.md):

1. ``describe``: each site's id, its spec's digest, its target table's fingerprint, columns, types and
   row counts. Sites whose columns differ from the others' are refused before any training.
2. ``moments``: each site's count, mean and centred cross-products (:class:`~pipeline.method.moments.Moments`),
   optionally with Gaussian noise at a stated epsilon (:mod:`~pipeline.federated.privacy`); the server
   merges them and fits the map to prior space, as the pooled fit does from streamed moments.
3. ``train`` rounds: each site starts from the global velocity weights, takes a few local steps on its own
   rows (:mod:`~pipeline.federated.site`) and returns its weights; the server averages them weighted by
   rows (FedAvg; FedProx adds ``mu/2 |w - w_global|^2`` to each site's loss) and checkpoints every round.
4. ``evaluate``: each site's held-out flow-matching loss of the final prior (one number per site).

Modules: ``spec`` (the run's settings), ``privacy`` (noised moments), ``site`` (what a site computes),
``rounds`` (what the server computes, and its checkpoints), ``server`` (the run, over any
:class:`~pipeline.federated.server.Sites` link), ``flower`` (the Flower ServerApp and ClientApp that carry
it), ``deployment`` (the Flower processes and CLI calls the commands start). Only ``flower`` and
``deployment`` import Flower; nothing here imports Ray.
"""
