"""The core prior fit on a real three-node Ray cluster (a head that runs drivers only, two worker
nodes, each its own raylet), submitted with `ray job submit`, reading features from the S3 server."""

import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.split import is_heldout, row_hash
from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.processes import poll
from tests.support.ray_cluster import RayCluster
from tests.support.ray_head import EXCLUDES, REPO, submit
from tests.support.s3server import BUCKET
from tests.support.shards import assert_disjoint_shards

ROWS, COLUMNS, FILES = 2_000_000, 16, 8  # 128 MB of float32 features


@pytest.mark.slow
def test_prior_fit_on_two_worker_nodes_streams_disjoint_shards_from_s3(s3_server, tmp_path):
    prefix = f"s3://{BUCKET}/fleet-{uuid.uuid4().hex[:8]}"
    data = Store.open(f"{prefix}/features")
    rng, features = np.random.default_rng(0), []
    for k in range(FILES):  # a fleet's files, as a Spark job leaves them (with its marker files)
        x = (rng.normal(size=(ROWS // FILES, COLUMNS)) * np.linspace(1, 4, COLUMNS)).astype(np.float32)
        features.append(x)
        path = tmp_path / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({**{f"f{j:02d}": x[:, j] for j in range(COLUMNS)},
                                 "site": [f"plant-{k % 4}"] * len(x)}), path)
        data.put_file(path.name, path)
        path.unlink()
    data.create("_SUCCESS", b"")
    data.create("_temporary/0/part-99999.parquet", b"half-written by a failed task")

    ray_dir = tempfile.mkdtemp(prefix="fp-mn-")  # short: Ray's socket paths must fit in 107 bytes
    cluster = RayCluster(Path(ray_dir)).start(workers=2, cpus_per_node=2, resources={"train_slot": 1})
    store = f"{prefix}/store"
    try:
        command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.head.address,
                   "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                   "python", "-m", "pipeline", "prior", "fit", "--features", f"{prefix}/features/",
                   "--store", store, "--workers", "2", "--worker-resource", "train_slot=1", "--latent-dim", "8",
                   "--projection", "pca", "--steps", "240", "--batch-size", "8192", "--width", "64", "--depth", "2",
                   "--report-every", "60", "--name", "fleet-core"]
        result = submit(command, cluster.head.env, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
        nodes = cluster.node_ids()
    finally:
        cluster.stop()
    assert poll(cluster.pids, lambda left: left == [], timeout=30) == []  # exactly the cluster we started is gone
    shutil.rmtree(ray_dir, ignore_errors=True)

    (record,) = Registry(Store.open(store)).records()  # exactly one prior
    assert record.kind == "prior" and record.name == "fleet-core" and record.metrics["step"] == 240
    ingest = record.config["ingest"]
    assert ingest["files"] == FILES  # _SUCCESS and _temporary/ skipped
    assert ingest["train_rows"] + ingest["heldout_rows"] == ROWS
    # the two Train workers ran on the two worker nodes, one each (never on the head)
    shards = ingest["shards"]
    assert sorted(nodes[s["node"]] for s in shards) == ["node-0", "node-1"]
    # and read disjoint shards that together are every training row once (the equal split's remainder aside)
    hashes = row_hash(np.concatenate(features), seed=0)
    assert_disjoint_shards(ingest, hashes[~is_heldout(hashes, 0.1)])
    # the driver never held the features: its peak memory grew by less than 3/4 of them (their float32 copy)
    rss = ingest["driver_peak_rss_mib"]
    data_mib = ROWS * COLUMNS * 4 / 2**20
    assert rss["end"] - rss["before_data"] < 0.75 * data_mib, (rss, data_mib)
    print(f"driver peak RSS: {rss}; features {data_mib:.0f} MiB; shards {shards}")
