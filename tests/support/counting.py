"""A store that counts the requests it sends, by operation, as the registry's readers and writers use it."""

from collections import Counter

from pipeline.storage import Store


class CountingStore(Store):
    """``store``'s objects through a store that counts each request it makes: one per object read, written,
    uploaded, downloaded, checked or deleted, one per listing (``read_many`` and ``delete_many`` count their
    keys). ``requests`` is a ``Counter`` by operation; ``total`` their sum."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.uri, store.backend)
        self.requests: Counter = Counter()

    def _call(self, op: str, key: str, fn, *args):
        self.requests[op] += len(args[0]) if fn.__name__ in ("read_many", "delete_many") else 1
        return super()._call(op, key, fn, *args)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def take(self) -> Counter:
        """The requests counted since the last ``take`` (and start counting afresh)."""
        counted, self.requests = self.requests, Counter()
        return counted
