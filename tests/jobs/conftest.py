import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="package")
def local_ray(s3_server):
    """A real local Ray for the job tests, stopped afterwards; nothing else is touched. It has the
    embedded runtime's shape: this machine's 2 CPUs for training plus one logical CPU for Ray Data's
    read tasks (``runtime.INGEST_CPUS``).

    It starts after the S3 server so that its processes inherit the AWS variables pointing at it,
    as a cluster's nodes get theirs from the environment or an instance role.
    """
    import ray

    if ray.is_initialized():  # one an earlier test's command started (a site check starts a local Ray)
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="package")
def two_blobs(tmp_path_factory):
    """4,000 rows of a 2-D mixture of two Gaussians, as a `features` list column in Parquet."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.5, (2000, 2)), rng.normal(2, 0.5, (2000, 2))]).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "blobs.parquet"
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2),
                             "site": ["a", "b"] * 2000}), path)
    return path
