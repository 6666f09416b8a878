"""Connecting to Ray: a dead address is a clear error at once, not a wait without end."""

import socket
import time

import pytest

from pipeline.errors import RayUnreachable
from pipeline.jobs.runtime import probe


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_a_dead_ray_address_fails_fast(form):
    address = form.format(f"127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(RayUnreachable, match=f"no Ray cluster answers at {address}"):
        probe(address)
    assert time.monotonic() - start < 10  # ray.init(address=...) itself ran past 84 s here


@pytest.mark.parametrize("address", ["nonsense", "host:notaport", "ray://"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(ValueError, match="expected host:port"):
        probe(address)
