"""A federated core prior over Flower's deployment engine: a SuperLink and four SuperNodes as separate processes on
127.0.0.1, each SuperNode able to read only its own site's bucket (its own S3 identity), the SuperLink (and so the
ServerApp) and this test's driver able to read none; one SuperNode is killed mid-round and comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.datasets import la_haute_borne as lhb
from pipeline.federated.site import spec_digest
from pipeline.registry import Registry
from pipeline.registry.registry import named_id
from pipeline.sites import load_site_spec
from pipeline.sites.models import load_prior
from pipeline.storage import S3Options, Store
from tests.support.flower import FlowerBench, base_env
from tests.support.processes import descendant_commands, poll, stop_group
from tests.support.s3server import SeaweedServer

pytestmark = pytest.mark.slow

SITES = [f"site-{t.lower()}" for t in lhb.TURBINES]  # one turbine per site, one bucket per site
ROWS = 3000  # per site


def rows_of(turbine: str) -> pa.Table:
    table = pq.read_table(lhb.PARQUET, columns=list(lhb.FEATURES), filters=[("site", "=", turbine), ("year", "=", 2014),
                                                                           ("fault", "=", False)])
    finite = np.isfinite(np.stack([table[c].to_numpy(zero_copy_only=False) for c in lhb.FEATURES], axis=1)).all(1)
    return table.filter(pa.array(finite)).slice(0, ROWS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Four site buckets on a SeaweedFS whose identities may each read one; the site specs that read them."""
    root = tmp_path_factory.mktemp("federated")
    server = SeaweedServer(root / "seaweed", {s: [f"Read:{s}", f"List:{s}"] for s in SITES}).start()
    saved = dict(os.environ)
    os.environ.update(server.env)  # the admin, to make the buckets
    try:
        fs = S3Options(endpoint_url=server.endpoint).filesystem()
        specs = {}
        for site, turbine in zip(SITES, lhb.TURBINES, strict=True):
            server.make_bucket(site)
            with fs.open(f"{site}/target/part-0.parquet", "wb") as f:
                pq.write_table(rows_of(turbine), f)
            spec = root / site / "site.yaml"
            spec.parent.mkdir()
            spec.write_text(yaml.safe_dump({"site": site, "description": f"turbine {turbine}, 2014",
                                            "columns": list(lhb.FEATURES),
                                            "target": {"uri": f"s3://{site}/target/"},
                                            "observations": {"uri": f"s3://{site}/target/"}}))
            specs[site] = spec
        yield server, specs, root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def test_each_party_reads_only_what_it_should(fleet):
    """The premise of the deployment test: a site's identity reads its bucket and no other; without credentials
    (the SuperLink's and the driver's environment) no bucket can be read."""
    server, specs, _ = fleet
    own = subprocess.run([sys.executable, "-c", READ, f"s3://{SITES[0]}/target/"], env={**base_env(),
                         **server.credentials(SITES[0])}, capture_output=True, text=True, timeout=120)
    assert own.stdout.strip() == str(ROWS), own.stderr
    for env, bucket in ((server.credentials(SITES[0]), SITES[1]), ({"AWS_ENDPOINT_URL_S3": server.endpoint}, SITES[0])):
        other = subprocess.run([sys.executable, "-c", READ, f"s3://{bucket}/target/"], env={**base_env(), **env},
                               capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and ("PermissionError" in other.stderr or "credentials" in other.stderr.lower()), \
            other.stdout + other.stderr[-2000:]


READ = "import sys; from pipeline.data import read_features; print(len(read_features(sys.argv[1]).values))"


def test_federated_fit_with_a_site_killed_mid_round(fleet, tmp_path):
    server, specs, _ = fleet
    bench = FlowerBench(tmp_path / "flower")
    registry_dir = tmp_path / "registry"
    name = "fed-test"
    checkpoints = registry_dir / "federated" / name
    fit = None
    try:
        bench.start_superlink({**base_env(), "AWS_ENDPOINT_URL_S3": server.endpoint})
        for site in SITES:
            bench.start_supernode(site, specs[site], {**base_env(), **server.credentials(site)})
        driver_env = {**base_env(), "AWS_ENDPOINT_URL_S3": server.endpoint}
        fit = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "federated", "fit", "--sites", ",".join(SITES), "--superlink",
             bench.address, "--insecure", "--store", str(registry_dir), "--name", name, "--rounds", "6",
             "--local-steps", "40", "--width", "32", "--depth", "2", "--min-sites", "3", "--round-timeout", "120",
             "--join-timeout", "180"], env=driver_env, stdout=open(tmp_path / "fit.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        victim = SITES[-1]
        poll(lambda: checkpoints.is_dir() and any(checkpoints.glob("round-00002*")), bool, timeout=600, every=0.5)
        node = bench.supernodes[victim]
        # mid-round: the victim's ClientApp process is training (its SuperNode runs one per message)
        poll(lambda: [c for c in descendant_commands(node.pid).values() if "clientapp" in c], bool, timeout=300,
             every=0.05)
        for pid in [node.pid, *descendant_commands(node.pid)]:  # the site's machine goes down: everything on it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.wait(timeout=30)
        killed_after = len(list(checkpoints.glob("round-*")))
        poll(lambda: len(list(checkpoints.glob("round-*"))), lambda n: n > killed_after, timeout=600, every=0.5)
        bench.start_supernode(victim, specs[victim], {**base_env(), **server.credentials(victim)})  # it returns
        assert fit.wait(timeout=900) == 0, (tmp_path / "fit.log").read_text()[-4000:]
    finally:
        stop_group(fit)
        bench.stop()
    output = (tmp_path / "fit.log").read_text()
    registry = Registry(Store.open(str(registry_dir)))
    record = registry.get(named_id("prior", name))
    federation = record.config["federated"]
    assert registry.alias("core") == record.id and record.kind == "prior"
    # lineage: every site's data fingerprint and spec digest, as the site computed them with its own credentials
    assert sorted(federation["sites"]) == sorted(SITES)
    for site in SITES:
        assert federation["sites"][site]["spec_sha256"] == spec_digest(load_site_spec(specs[site]))
        assert federation["sites"][site]["train_rows"] + federation["sites"][site]["heldout_rows"] == ROWS
        assert len(federation["sites"][site]["fingerprint"]) == 64
    assert federation["rounds"] == 6 and len(federation["sites_per_round"]) == 6
    assert 3 in federation["sites_per_round"], federation  # the round the victim was killed in went on without it
    assert federation["sites_per_round"][-1] == 4, federation  # and it rejoined
    model_bytes = 4 * sum(t.numel() for t in load_prior(registry, record.id).velocity.state_dict().values())
    assert federation["bytes_exchanged"] >= 2 * sum(federation["sites_per_round"]) * model_bytes
    assert sorted(k for k in record.metrics if k.startswith("heldout_fm.")) == [f"heldout_fm.{s}" for s in SITES]
    prior = load_prior(registry, record.id)
    assert prior.info["features"]["columns"] == list(lhb.FEATURES)
    assert f"prior {record.id}" in output and "finished:completed" in output
