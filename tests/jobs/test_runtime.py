"""Connecting to Ray: a dead address is a clear error at once, not a wait without end."""

import socket
import time

import pytest

from pipeline.errors import RayUnreachable
from pipeline.jobs.runtime import check_reachable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_a_dead_ray_address_fails_fast(form):
    address = form.format(f"127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(RayUnreachable, match=f"no Ray cluster answers at {address}"):
        check_reachable(address)
    assert time.monotonic() - start < 10  # ray.init(address=...) itself ran past 84 s here


@pytest.mark.parametrize("address", ["nonsense", "host:notaport", "ray://"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(ValueError, match="expected host:port"):
        check_reachable(address)


def test_the_raylets_warnings_go_to_rays_log_folder_and_its_other_messages_are_printed(local_ray, monkeypatch,
                                                                                       capfd):
    """Ray's driver prints what the raylet pushes to it even without log_to_driver; flowprior keeps its warnings
    (e.g. about how many worker processes started) in Ray's log folder, and still prints the rest."""
    import os

    from ray._private import worker

    from pipeline.jobs import runtime

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # restored afterwards
    runtime._raylet_warnings_to_log()
    runtime._raylet_warnings_to_log()  # once is enough: not wrapped twice
    capfd.readouterr()
    worker.print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes have been started"], "pid": "raylet",
                               "is_err": False}, False)
    assert "PYTHON worker processes" not in "".join(capfd.readouterr())
    with open(os.path.join(runtime.logs_folder(), "flowprior-driver.log")) as log:
        assert "(raylet) WARNING: 8 PYTHON worker processes have been started" in log.read()
    worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": True}, False)
    assert "A worker died or was killed" in "".join(capfd.readouterr())
