"""An image site end to end on a real local Ray: a core prior on image embeddings, and a site whose observations
are images (a Parquet column of fixed-shape tensors) encoded by a conv autoencoder. ``site run`` checks it, fine-tunes
its prior and aligns its encoder; a sweep over it chooses a lambda that ``site align --from-sweep`` reproduces."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.data import read_features
from pipeline.data.schema import FeatureSchema
from pipeline.method.configs import EncoderLayout, FitConfig
from pipeline.method.prior import FlowPrior
from pipeline.registry import Registry
from pipeline.sites.decision import measure
from pipeline.sites.models import load_encoder, publish_prior
from pipeline.storage import Store
from tests.support.sites import flowprior

SITE = "line-b"


def write_images(path, seed: int = 0) -> None:
    """Two production lines' 8 x 8 inspection images, each a blob at a position ``p``, and each image's
    2-D embedding (``p`` plus a little noise, what an embedding model would give): ``line-a``'s blobs anywhere,
    ``line-b``'s in one corner (a sub-population the core prior spends most of its mass away from)."""
    g = np.random.default_rng(seed)
    corner = 1.5 + 1.5 * g.random((1500, 2))
    anywhere = 1.5 + 4.0 * g.random((3000, 2))
    p = np.concatenate([anywhere, corner]).astype(np.float32)  # (n, 2)
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1)  # (8, 8, 2)
    images = np.exp(-((grid[None] - p[:, None, None]) ** 2).sum(-1) / 2).astype(np.float32)  # (n, 8, 8)
    embedding = p + 0.05 * g.standard_normal(p.shape).astype(np.float32)
    pq.write_table(pa.table({
        "site": ["line-a"] * len(anywhere) + [SITE] * len(corner),
        "pixels": pa.FixedShapeTensorArray.from_numpy_ndarray(images[:, None]),  # (n, 1, 8, 8)
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), 2)}), path)


def publish_image_core(store_uri: str, table: str):
    """A small core prior on every line's embeddings, registered as ``prior fit`` registers one."""
    x = read_features(table, feature_column="embedding")
    prior = FlowPrior.fit(x.values, width=32, depth=2, fit=FitConfig(steps=300, warmup=20, lr=2e-3), seed=0)
    prior.info["features"] = FeatureSchema.measure(x.columns, x.dtypes, x.values).to_dict()
    own = measure(prior, prior.to_prior(x.values[:2000]), 1.0, 0.0, 1000)
    return publish_prior(Registry(Store.open(store_uri)), prior, fingerprint=x.fingerprint,
                         metrics={"heldout_fm": own["fm_site"], "heldout_nll_proxy": own["nll_site"],
                                  "nll_samples": 1000})


def image_spec(folder, table: str, **encoder) -> str:
    data = {"site": SITE, "description": "inspection images of line B",
            "target": {"uri": table, "filters": {"site": SITE}, "feature_column": "embedding"},
            "observations": {"uri": table, "filters": {"site": SITE}, "feature_column": "pixels"},
            "encoder": {"kind": "conv", "image_shape": [1, 8, 8], "widths": [8, 16], **encoder},
            "alignment": {"lambda": 0.5, "steps": 40, "log_every": 20, "eval_points": 500},
            "finetune": {"steps": 30, "refit_steps": 30, "probe_steps": 20, "log_every": 10},
            "thresholds": {"finetune_gain": 0.0, "refit_fm": 1e9}}  # decides finetune
    (folder / f"{SITE}.yaml").write_text(yaml.safe_dump(data))
    return str(folder / f"{SITE}.yaml")


@pytest.mark.slow
def test_an_image_site_is_checked_fine_tuned_aligned_and_swept(local_ray, tmp_path, capsys):
    store_uri, table = str(tmp_path / "store"), str(tmp_path / "images.parquet")
    write_images(table)
    core = publish_image_core(store_uri, table)
    registry = Registry(Store.open(store_uri))
    spec = image_spec(tmp_path, table)

    code, out, err = flowprior(capsys, "site", "run", spec, "--store", store_uri)
    assert code == 0, (out, err)
    (check,) = registry.records(kind="site-check")
    (site_prior,) = registry.records(kind="site-prior")
    (encoder,) = registry.records(kind="encoder")
    assert check.config["decision"] == "finetune" and site_prior.parents[0] == core.id
    assert site_prior.config["method"] == "adapter"  # the default, on embeddings like any other features
    assert encoder.aligned_to == site_prior.id
    assert encoder.config["encoder"] == {"obs_dim": 64, "latent_dim": 2, "kind": "conv", "image_shape": [1, 8, 8],
                                         "widths": [8, 16]}
    model = load_encoder(registry, encoder.id)
    assert model.config.layout == EncoderLayout(kind="conv", widths=(8, 16), image_shape=(1, 8, 8))
    images = read_features(table, feature_column="pixels", filters={"site": SITE})
    assert images.shape == (1, 8, 8) and model.encode(torch.from_numpy(images.values)).shape[1] == 2
    assert encoder.metrics["l_align"] < encoder.metrics["baseline_l_align"]  # aligned, against lambda 0

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "images", "sites": [f"{SITE}.yaml"], "steps": 40, "epoch_steps": 20,
                                     "space": {"lambda": {"grid": [0.05, 0.5]}}, "select": {"metric": "knn_nll"}}))
    code, out, err = flowprior(capsys, "sweep", str(sweep), "--store", store_uri, "--json")
    assert code == 0, err
    (record,) = registry.records(kind="sweep")
    choice = record.config["choices"][SITE]
    assert json.loads(out)["sweep"] == record.id and choice["prior"] == site_prior.id
    code, _, err = flowprior(capsys, "site", "align", spec, "--from-sweep", record.id, "--store", store_uri)
    assert code == 0, err
    aligned = next(r for r in registry.records(kind="encoder") if record.id in r.parents)
    for name in ("recon", "knn_nll", "spread"):  # same seed, same settings: the trial's numbers
        assert aligned.metrics[name] == pytest.approx(choice[name], rel=1e-5), name

    wrong = image_spec(tmp_path, table, image_shape=[4, 4, 4], widths=[8])  # 64 values, another shape
    code, _, err = flowprior(capsys, "site", "align", wrong, "--store", store_uri, "--force")
    assert code == 2 and "encoder.image_shape [4, 4, 4] is [channels, height, width]" in err
    assert "column 'pixels') hold tensors of shape [1, 8, 8]" in err, err


def test_site_validate_finds_an_image_shape_that_does_not_fit_the_tensor_column_without_reading_rows(tmp_path,
                                                                                                        capsys):
    store_uri, table = str(tmp_path / "store"), str(tmp_path / "images.parquet")
    write_images(table)
    publish_image_core(store_uri, table)
    code, out, _ = flowprior(capsys, "site", "validate", image_spec(tmp_path, table), "--store", store_uri)
    assert code == 0 and "conv encoder [8, 16]" in out, out
    wrong = image_spec(tmp_path, table, image_shape=[1, 4, 16], widths=[4])
    code, out, _ = flowprior(capsys, "site", "validate", wrong, "--store", store_uri)
    assert code == 1 and "encoder.image_shape [1, 4, 16] is [channels, height, width], but the observations " \
                         f"({table}, column 'pixels') hold tensors of shape [1, 8, 8]" in out, out
