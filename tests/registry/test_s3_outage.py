"""The S3 server dies or hangs in the middle of work: a clear error within seconds, nothing half-visible."""

import os
import signal
import time

import pytest

from pipeline.errors import StoreError
from pipeline.registry import CORE_ALIAS, Registry
from pipeline.storage import S3Options, Store
from tests.support.s3server import SeaweedServer


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A SeaweedFS of this test's own (the session's shared one must stay up), with bucket ``outage``."""
    server = SeaweedServer(tmp_path / "seaweed").start()
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        server.make_bucket("outage")
        yield server
    finally:
        if server.process and server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGCONT)  # in case the test left it stopped
        server.stop()


def fast_failing_registry(server: SeaweedServer) -> Registry:
    options = S3Options(endpoint_url=server.endpoint, connect_timeout=1, read_timeout=2, retries=1)
    return Registry(Store.open("s3://outage/fleet", options))


@pytest.mark.slow
def test_server_killed_mid_publish_then_the_same_publish_succeeds(own_server, tmp_path):
    registry = fast_failing_registry(own_server)
    artifact = tmp_path / "prior.safetensors"
    artifact.write_bytes(os.urandom(48 << 20))  # 6 parts of 8 MiB: a multipart upload
    killed_at = []

    def kill_after_first_part(done: int, total: int) -> None:
        if not killed_at and 0 < done < total:  # at least one part is on the server
            own_server.kill()  # SIGKILL, as a crash or a lost node would
            killed_at.append(time.monotonic())

    with pytest.raises(StoreError, match=r"store s3://outage/fleet: cannot upload artifacts/[0-9a-f]{64}") as info:
        registry.register("prior", artifact=artifact, progress=kill_after_first_part)
    assert killed_at, "the server was not killed mid-upload"
    assert time.monotonic() - killed_at[0] < 15  # a clear error within seconds, not minutes (0.4 s here)
    assert own_server.env["AWS_SECRET_ACCESS_KEY"] not in str(info.value)

    own_server.start()  # same data folder and ports: what was written before the crash is still there
    assert registry.records() == []
    assert registry.store.list("artifacts") == []  # the unfinished multipart upload never became visible
    assert registry.alias(CORE_ALIAS) is None

    # the same publish, rerun as an operator would: with the default timeouts, as a restarted server's volume
    # may take seconds to take writes again (2 s read timeouts failed here once under a loaded CI machine)
    registry = Registry(Store.open("s3://outage/fleet", S3Options(endpoint_url=own_server.endpoint)))
    record = registry.register("prior", artifact=artifact)
    assert [r.id for r in registry.records()] == [record.id]
    assert registry.alias(CORE_ALIAS) == record.id
    fetched = registry.fetch_artifact(record, tmp_path / "back.safetensors")
    assert fetched.read_bytes() == artifact.read_bytes()


@pytest.mark.slow
def test_a_hung_server_is_an_error_within_the_read_timeout(own_server):
    registry = fast_failing_registry(own_server)
    registry.register("prior")
    os.killpg(own_server.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"store s3://outage/fleet: cannot list registry/records: \w*Timeout"):
        registry.records()
    assert time.monotonic() - start < 15  # botocore's defaults wait minutes here
