"""The leases of running ``registry gc``s, and how a publisher waits for them (see :mod:`.retention` for why).

A gc holds ``registry/gc/<expiry>-<random>.lease`` while it lists and deletes: created before it lists
anything, deleted when it is done, and it stops deleting before the expiry in its name. A publisher,
after its record is written, waits until every lease it saw has ended (:func:`wait_for_collectors`).
"""

from __future__ import annotations

import logging
import secrets
import time

from pipeline.storage import Store
from pipeline.storage.layout import LEASES

LEASE_SECONDS = 900.0  # a gc stops deleting after this; publishers wait at most this long
CLOCK_MARGIN = 60.0  # a lease counts as live this long after its expiry (clocks of gc and publisher differ)

log = logging.getLogger(__name__)


def expiry_of(name: str) -> int | None:
    """The unix second a lease's name says it expires at (None for a name that is no lease)."""
    head = name.split("-", 1)[0]
    return int(head) if name.endswith(".lease") and head.isdigit() else None


def take(store: Store, seconds: float) -> tuple[str, float]:
    """Create a lease for ``seconds``; return its key and the time by which its gc must stop deleting."""
    key = f"{LEASES}/{int(time.time() + seconds)}-{secrets.token_hex(4)}.lease"
    store.create(key, b"")
    return key, time.time() + seconds - CLOCK_MARGIN


def clear_expired(store: Store) -> None:
    """Delete the leases of gcs that crashed, long expired."""
    for name in store.list(LEASES):
        expiry = expiry_of(name)
        if expiry is not None and expiry + 2 * CLOCK_MARGIN < time.time():
            store.delete(f"{LEASES}/{name}")


def live_leases(store: Store, now: float | None = None) -> list[str]:
    """The leases of gcs running now (a lease's expiry, in unix seconds, leads its name)."""
    now = time.time() if now is None else now
    return [n for n in store.list(LEASES) if (expiry_of(n) or 0) + CLOCK_MARGIN > now]


def wait_for_collectors(store: Store, poll: float = 0.25, limit: float = LEASE_SECONDS + CLOCK_MARGIN) -> bool:
    """Return once every gc that held a live lease at the call has ended, or after ``limit`` seconds by the
    caller's own clock (True if they all ended). A gc stops deleting ``CLOCK_MARGIN`` before its lease ends
    and takes at most ``LEASE_SECONDS``, so no real gc outlasts the limit; a lease whose name claims a later
    expiry (a gc host whose clock runs ahead, a stray file) cannot hold a publisher longer. A gc that starts
    later lists the records after its lease, so it sees the caller's record and need not be waited for:
    back-to-back gcs cannot starve a publisher."""
    deadline = time.monotonic() + limit
    running = set(live_leases(store))
    while running:
        if time.monotonic() >= deadline:
            log.warning("store %s: gave up waiting for gc lease(s) %s after %.0f s (no gc runs that long: a clock "
                        "ahead, or a stray file under %s/)", store.uri, ", ".join(sorted(running)), limit, LEASES)
            return False
        time.sleep(poll)
        running &= set(live_leases(store))
    return True
