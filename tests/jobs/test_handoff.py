"""The validating pass's handoff to a fit that started before it finished, on a real local Ray."""

import pytest

from pipeline.jobs.handoff import Handoff, HandoffFailed


def _read(handoff: Handoff, key: str) -> object:
    try:
        return handoff.get(key)
    except HandoffFailed as error:
        return f"failed: {error}"


def test_readers_wait_for_the_values_and_all_see_a_failure(local_ray):
    read = local_ray.remote(num_cpus=0)(_read)
    handoff = Handoff.start()
    waiting = [read.remote(handoff, "space") for _ in range(3)]  # tasks that started before the pass finished
    ready, _ = local_ray.wait(waiting, timeout=1.0)
    assert not ready and handoff.failure() is None  # nothing to read yet: they wait
    handoff.put(space=[1.0, 2.0], heldout=[[0.5]])
    assert local_ray.get(waiting) == [[1.0, 2.0]] * 3
    assert _read(handoff, "heldout") == [[0.5]]  # the driver's process too
    handoff.close()

    failed = Handoff.start()
    waiting = read.remote(failed, "space")
    failed.fail("DataError: x.parquet: 1 rows have NaN/inf/null values, first in column 'a' at row 1")
    assert local_ray.get(waiting) == "failed: DataError: x.parquet: 1 rows have NaN/inf/null values, first in " \
                                     "column 'a' at row 1"
    assert "x.parquet" in failed.failure()
    with pytest.raises(HandoffFailed, match="column 'a' at row 1"):
        failed.get("heldout")
    failed.close()
