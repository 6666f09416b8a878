"""The server's maths and checkpoints: FedAvg's weighted mean, merged moments, the feature contract, the EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.schema import FeatureSchema
from pipeline.errors import DataError
from pipeline.federated.rounds import (
    RoundCheckpoint,
    agree_contract,
    ema_update,
    merge_moments,
    round_decay,
    weighted_average,
)
from pipeline.method.configs import FitConfig
from pipeline.method.moments import Moments
from pipeline.method.prior_space import PriorSpace
from pipeline.storage import Store


def test_fedavg_weights_each_site_by_its_rows():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    b = {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor([4.0])}
    mean = weighted_average([(a, 1), (b, 3)])
    assert torch.allclose(mean["w"], torch.tensor([4.0, -1.0])) and torch.allclose(mean["b"], torch.tensor([3.0]))
    assert mean["w"].dtype == torch.float32


def test_merged_site_moments_are_the_pooled_rows_moments():
    rng = np.random.default_rng(0)
    sites = [rng.normal(loc=k, size=(n, 3)) for k, n in enumerate((10, 200, 37))]
    merged = merge_moments(Moments.of(x) for x in sites)
    pooled = Moments.of(np.concatenate(sites))
    assert merged.n == pooled.n and np.allclose(merged.mean, pooled.mean) and np.allclose(merged.m2, pooled.m2)


def described(columns: list[str]) -> dict:
    return {"columns": columns, "dtypes": ["double"] * len(columns), "fingerprint": "f"}


def test_the_contract_is_the_sites_common_columns_and_a_differing_site_is_named():
    same = {s: described(["a", "b", "c"]) for s in ("s1", "s2")}
    assert agree_contract(same) == (["a", "b", "c"], ["double"] * 3)
    with pytest.raises(DataError, match=r"site s3 lacks c and has extra d.*site s4 has the same columns in another "
                                        r"order \(b, a, c\)"):
        agree_contract({**same, "s3": described(["a", "b", "d"]), "s4": described(["b", "a", "c"])})


def test_a_round_of_one_step_decays_the_ema_as_one_pooled_step():
    fit = FitConfig(ema_decay=0.999)
    assert round_decay(fit, 1, 10**6) == pytest.approx(0.999)  # past the warm-up
    assert round_decay(fit, 50, 10**6) == pytest.approx(0.999 ** 50)
    assert round_decay(fit, 1, 5000) == pytest.approx(5001 / 5010)  # the warm-up still binds
    assert round_decay(fit, 1, 0) == pytest.approx(0.1)  # the warm-up: min(d, 1 / 10)
    ema = ema_update({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.75)
    assert torch.allclose(ema["w"], torch.full((2,), 0.25))


def test_the_last_round_checkpoint_comes_back(tmp_path):
    store = Store.open(str(tmp_path))
    space = PriorSpace.fit(Moments.of(np.random.default_rng(0).normal(size=(20, 3))))
    schema = FeatureSchema(("a", "b", "c"), ("double",) * 3, (0.0,) * 3, (1.0,) * 3)
    for r in (1, 2, 3):
        RoundCheckpoint(r, {"w": torch.full((2,), float(r))}, {"w": torch.zeros(2)}, space, schema,
                        {"s1": described(["a"])}, [{"round": r}]).save(store, "federated/run")
    back = RoundCheckpoint.latest(store, "federated/run")
    assert back.round == 3 and torch.equal(back.weights["w"], torch.full((2,), 3.0))
    assert torch.equal(back.space.projection, space.projection) and back.schema == schema
    assert RoundCheckpoint.latest(store, "federated/other") is None
