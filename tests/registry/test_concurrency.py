"""Many writer processes at once, on local disk and on a real S3 server: nothing lost or clobbered."""

import multiprocessing as mp

import pytest

from pipeline.registry import CORE_ALIAS, Registry
from pipeline.storage import Store
from tests.support.writers import write_priors

WRITERS, RECORDS_EACH = 32, 3


@pytest.mark.slow
def test_32_concurrent_writers_lose_nothing_and_serialise_alias_moves(store_uri):
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    processes = [context.Process(target=write_priors, args=(store_uri, w, RECORDS_EACH, barrier, results))
                 for w in range(WRITERS)]
    for p in processes:
        p.start()
    reports = [results.get(timeout=600) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert [error for _, _, error in reports if error] == []
    written = {rid: (w, i) for w, ids, _ in reports for i, rid in enumerate(ids)}
    assert len(written) == WRITERS * RECORDS_EACH  # ids are unique

    registry = Registry(Store.open(store_uri))
    records = registry.records()
    # 0 lost, 0 clobbered: every record is there, with the content its writer gave it
    assert {r.id: (r.config["writer"], r.config["seq"]) for r in records} == written

    # Alias moves are serialised: versions 1..N without gaps, each move chained to the one before,
    # every writer's move present exactly once, and the alias points at the last one.
    history = registry.alias_history(CORE_ALIAS)
    assert [m.version for m in history] == list(range(1, len(written) + 1))
    assert sorted(m.target for m in history) == sorted(written)
    assert [m.previous for m in history] == [None] + [m.target for m in history[:-1]]
    assert registry.alias(CORE_ALIAS) == history[-1].target
    # each writer's own moves appear in the order it made them
    for _, ids, _ in reports:
        assert [m.target for m in history if m.target in ids] == ids
