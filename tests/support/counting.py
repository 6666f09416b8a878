"""A store that counts the requests it sends, by operation, and the requests of a site's three steps."""

from collections import Counter

from pipeline.registry import Registry
from pipeline.storage import Store


class CountingStore(Store):
    """``store``'s objects through a store that counts each request it makes: one per object read, written,
    uploaded, downloaded, checked or deleted, one per listing (``read_many`` and ``delete_many`` count their
    keys). ``requests`` is a ``Counter`` by operation."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.uri, store.backend)
        self.requests: Counter = Counter()

    def _call(self, op: str, key: str, fn, *args):
        self.requests[op] += len(args[0]) if fn.__name__ in ("read_many", "delete_many") else 1
        return super()._call(op, key, fn, *args)

    def take(self) -> Counter:
        """The requests counted since the last ``take`` (and start counting afresh)."""
        counted, self.requests = self.requests, Counter()
        return counted


def requests_per_step(store: CountingStore, spec) -> dict[str, dict[str, int]]:
    """``{step: {operation: requests}}`` of the site's check, fine-tune (``auto``) and align, run in this process
    one after the other through ``store``."""
    from pipeline.sites.align import align_site
    from pipeline.sites.check import check_site
    from pipeline.sites.finetune import finetune_site

    registry, counted = Registry(store), {}
    for step, run in (("check", check_site), ("finetune", finetune_site), ("align", align_site)):
        store.take()
        run(spec, registry, say=lambda _: None)
        counted[step] = dict(store.take())
    return counted
