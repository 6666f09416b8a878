"""The core prior fit on a real three-node Ray cluster (a head that runs drivers only, two worker
nodes, each its own raylet), submitted with `ray job submit`, reading features from the S3 server."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

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


FLEET = 32  # small sites, each a turbine's healthy 2015 readings under another site id


@pytest.mark.slow
def test_site_run_of_32_sites_on_two_worker_nodes_aligns_every_site_once(s3_server, tmp_path):
    from tests.support.sites import publish_core, small_spec

    store = f"s3://{BUCKET}/sites-{uuid.uuid4().hex[:8]}"
    core = publish_core(store, steps=60)
    specs = []
    for i in range(FLEET):
        site = f"line-{i:02d}"
        (tmp_path / site).mkdir()
        path = small_spec(tmp_path / site, site="R80711", finetune={"steps": 20, "refit_steps": 20, "probe_steps": 10,
                                                                    "log_every": 10},
                          alignment={"lambda": 1.0, "steps": 20, "log_every": 10, "eval_points": 200},
                          thresholds={"finetune_gain": 0.0 if i % 2 else 0.99, "refit_fm": 1e9})  # half fine-tune
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "site": site}))
        specs.append(str(path))

    ray_dir = tempfile.mkdtemp(prefix="fp-mn-")  # short: Ray's socket paths must fit in 107 bytes
    cluster = RayCluster(Path(ray_dir)).start(workers=2, cpus_per_node=2)
    try:
        command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.head.address,
                   "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                   "python", "-m", "pipeline", "site", "run", *specs, "--store", store]
        result = submit(command, cluster.head.env, timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
        nodes = cluster.node_ids()
        left = subprocess.run(
            [sys.executable, "-c", "import ray, json; from ray.util.state import list_tasks; ray.init(logging_level="
             "'ERROR'); print(json.dumps([t.state for t in list_tasks(limit=10000) if t.state not in "
             "('FINISHED', 'FAILED')]))"],
            capture_output=True, text=True, timeout=120,
            env={**cluster.head.env, "RAY_ADDRESS": f"127.0.0.1:{cluster.head.gcs_port}"})
    finally:
        cluster.stop()
    assert poll(cluster.pids, lambda pids: pids == [], timeout=30) == []  # exactly the cluster we started is gone
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert left.returncode == 0 and json.loads(left.stdout.strip().splitlines()[-1]) == [], left.stdout + left.stderr
    assert f"[site run] {FLEET}/{FLEET} sites, 0 in flight" in result.stdout, result.stdout[-3000:]

    registry = Registry(Store.open(store))
    records = registry.records()
    kinds = {}
    for record in records:
        kinds.setdefault(record.site, []).append(record.kind)
    assert kinds.pop(None) == ["prior"]
    expected = {f"line-{i:02d}": ["site-check", *(["site-prior"] if i % 2 else []), "encoder"] for i in range(FLEET)}
    assert kinds == expected  # every site's path, each record exactly once
    ran_on = set()
    for record in records:
        if record.kind == "encoder":
            assert registry.aligned(record.site).id == (record.parents[0] if record.site[-1] in "13579" else core.id)
            log = registry.store.read(record.config["log"]).decode()
            ran_on.add(nodes[re.search(r"on node ([0-9a-f]+)", log).group(1)])
    assert ran_on == {"node-0", "node-1"}  # the sites' tasks ran on both worker nodes (never on the head)
