"""A small registry history the registry, fleet and CLI tests share; an adapter site prior and its core; other
sites' records in bulk."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.registry import Record, Registry, aliases
from pipeline.storage import Store
from pipeline.storage.layout import RECORDS


def build_fleet(registry: Registry) -> dict:
    """Core v1 -> site priors and encoders for three sites; then core v2 with one site moved over."""
    core1 = registry.register("prior", fingerprint="a" * 64, config={"v": 1})
    s1 = registry.register("site-prior", site="s1", parents=[core1.id], fingerprint="b" * 64)
    e1 = registry.register("encoder", site="s1", parents=[s1.id], aligned_to=s1.id)
    e2 = registry.register("encoder", site="s2", parents=[core1.id], aligned_to=core1.id)
    core2 = registry.register("prior", parents=[core1.id], fingerprint="c" * 64, config={"v": 2})
    e3_old = registry.register("encoder", site="s3", aligned_to=core1.id)
    s3 = registry.register("site-prior", site="s3", parents=[core2.id])
    e3 = registry.register("encoder", site="s3", parents=[s3.id], aligned_to=s3.id)
    return dict(core1=core1, s1=s1, e1=e1, e2=e2, core2=core2, e3_old=e3_old, s3=s3, e3=e3)


def adapter_pair(registry: Registry, folder: Path, site: str = "s9") -> dict:
    """A core prior (a 1.33 MB artifact, not made current) and ``site``'s site prior stored as a 150.2 kB adapter
    of it, in the record format ``sites.models.publish_prior`` writes (any bytes: no model is loaded)."""
    (folder / "core.bin").write_bytes(b"c" * 1_330_000)
    core = registry.register("prior", artifact=folder / "core.bin", metrics={"heldout_fm": 1.0}, make_current=False)
    (folder / "adapter.bin").write_bytes(b"a" * 150_200)
    adapter = registry.register("site-prior", site=site, parents=[core.id], artifact=folder / "adapter.bin",
                                config={"mode": "finetune", "method": "adapter", "adapter": {"rank": 8, "alpha": 64.0},
                                        "core": {"id": core.id, "hash": core.hash}})
    return dict(core=core, adapter=adapter)


def other_sites(store: Store, core: str, first: int, last: int, threads: int = 1) -> None:
    """Sites ``other<first>`` to ``other<last - 1>``: a record of each site kind against ``core`` (written as
    records, not through ``register``: fast) and their check's alias, as a fleet's other sites leave them."""
    def one(i: int) -> None:
        site = f"other{i:05d}"
        for kind in ("site-check", "site-prior", "encoder"):
            record = Record.new(kind, site=site, parents=[core], aligned_to=core if kind == "encoder" else None,
                                config={"decision": "reuse", "step": f"{site}.x"}, metrics={"fm_ratio": 1.0})
            store.create(f"{RECORDS}/{record.id}.json", record.to_json())
            if kind == "site-check":
                aliases.move(store, f"site-check.{site}", record.id)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(first, last)))
