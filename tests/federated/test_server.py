"""The federated run over in-process sites (the same site and server code the Flower apps run): the map from
merged moments, dropouts and rejoins, resuming from a checkpoint, and the contract checks before round 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import DataError
from pipeline.federated.local import LocalSites
from pipeline.federated.rounds import CHECKPOINTS, RoundCheckpoint
from pipeline.federated.server import FederationError, fit_federated
from pipeline.federated.site import SiteRows, local_update, site_seed
from pipeline.federated.spec import FederatedSpec
from pipeline.method.prior_space import PriorSpace
from pipeline.method.velocity import VelocityMLP
from pipeline.registry import Registry
from pipeline.registry.registry import named_id
from pipeline.sites.models import load_prior
from pipeline.storage import Store

COLUMNS = ["a", "b", "c"]


def site_rows(n_sites: int = 3, n: int = 300) -> dict[str, SiteRows]:
    rng = np.random.default_rng(0)
    return {f"s{k}": SiteRows.of(f"s{k}", rng.normal(loc=k, scale=1 + k, size=(n + 50 * k, 3)), 0.2,
                                 columns=COLUMNS) for k in range(n_sites)}


def small_spec(rows: dict, **changes) -> FederatedSpec:
    settings = dict(sites=tuple(rows), name="fed", rounds=4, local_steps=3, width=16, depth=1, seed=0)
    return FederatedSpec(**{**settings, **changes})


class Flaky(LocalSites):
    """Sites that are away in some rounds: ``away[round] = {site, ...}`` (a SuperNode down, then back)."""

    def __init__(self, rows, spec, away: dict[int, set[str]]) -> None:
        super().__init__(rows, spec)
        self.away = away

    def train(self, sites, weights, space, instructions):
        self.absent = self.away.get(instructions.round, set())
        try:
            return super().train(sites, weights, space, instructions)
        finally:
            self.absent = set()


def test_the_map_to_prior_space_is_the_pooled_rows_map_and_the_prior_is_registered_as_core(tmp_path):
    rows = site_rows()
    spec = small_spec(rows, latent_dim=2, projection="pca", normaliser="per-dim")
    store = Store.open(str(tmp_path))
    record = fit_federated(LocalSites(rows, spec), spec, store, say=lambda _: None)
    registry = Registry(store)
    assert registry.alias("core") == record.id == named_id("prior", "fed")
    prior = load_prior(registry, record.id)
    pooled = PriorSpace.fit(torch.from_numpy(np.concatenate([r.train for r in rows.values()])).double(), 2, "pca",
                            "per-dim", 0)
    assert torch.allclose(prior.space.projection.double(), pooled.projection.double(), atol=1e-6)
    assert torch.allclose(prior.space.mean.double(), pooled.mean.double(), atol=1e-5)
    assert torch.allclose(prior.space.scale.double(), pooled.scale.double(), atol=1e-5)
    assert prior.info["features"]["columns"] == COLUMNS
    federation = record.config["federated"]
    assert federation["sites"] == {s: r.description for s, r in rows.items()}
    assert federation["sites_per_round"] == [3, 3, 3, 3]
    for name in ("heldout_fm", "heldout_nll_proxy", "nll_samples", *(f"heldout_fm.{s}" for s in rows)):
        assert np.isfinite(record.metrics[name]), name  # what a site check compares a site with


def test_a_federation_of_one_site_is_that_sites_own_training(tmp_path):
    rows = site_rows(1)
    spec = small_spec(rows, rounds=2)
    store = Store.open(str(tmp_path))
    fit_federated(LocalSites(rows, spec), spec, store, say=lambda _: None)
    last = RoundCheckpoint.latest(store, f"{CHECKPOINTS}/fed")
    z = last.space.apply(torch.from_numpy(rows["s0"].train))
    velocity = spec.velocity(last.space.latent_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        weights = VelocityMLP(velocity).state_dict()
    state: dict = {}
    for r in (1, 2):  # the site continuing its own AdamW state, round after round
        weights, _, state = local_update(weights, velocity, z, spec.fit, (r - 1) * 3, 3, spec.site_batch, 0.0, state,
                                         seed=site_seed(spec.seed, r, "s0"))
    for name, value in weights.items():
        assert torch.allclose(last.weights[name], value, atol=1e-6), name


def test_a_site_that_drops_out_misses_its_rounds_and_rejoins(tmp_path):
    rows = site_rows()
    spec = small_spec(rows, min_sites=2)
    record = fit_federated(Flaky(rows, spec, {2: {"s1"}, 3: {"s1"}}), spec, Store.open(str(tmp_path)),
                           say=lambda _: None)
    assert record.config["federated"]["sites_per_round"] == [3, 2, 2, 3]
    history = load_prior(Registry(Store.open(str(tmp_path))), record.id).info["history"]
    assert [h["sites"] for h in history][1] == ["s0", "s2"]


def test_too_few_sites_stop_the_run_and_a_rerun_resumes_from_its_last_round(tmp_path):
    rows = site_rows()
    spec = small_spec(rows, min_sites=3, retries=2)
    store = Store.open(str(tmp_path))
    with pytest.raises(FederationError, match="round 3: fewer than 3 sites replied in 2 attempts"):
        fit_federated(Flaky(rows, spec, {3: {"s2"}}), spec, store, say=lambda _: None)
    assert RoundCheckpoint.latest(store, f"{CHECKPOINTS}/fed").round == 2
    assert Registry(store).records("prior") == []
    seen = []
    record = fit_federated(LocalSites(rows, spec), spec, store, say=lambda _: None,
                           on_round=lambda state: seen.append(state.round))
    assert seen == [3, 4]  # rounds 1 and 2 came from the checkpoint
    assert [h["round"] for h in load_prior(Registry(store), record.id).info["history"]] == [1, 2, 3, 4]


def test_sites_whose_columns_differ_are_refused_before_round_one(tmp_path):
    rows = site_rows()
    x = np.random.default_rng(1).normal(size=(300, 3))
    rows["s9"] = SiteRows.of("s9", x, 0.2, columns=["a", "c", "b"])
    spec = small_spec(rows)
    store = Store.open(str(tmp_path))
    with pytest.raises(DataError, match=r"site s9 has the same columns in another order \(a, c, b\)"):
        fit_federated(LocalSites(rows, spec), spec, store, say=lambda _: None)
    assert store.list(CHECKPOINTS) == [] and Registry(store).records() == []


def test_a_site_whose_data_changed_cannot_resume_the_run(tmp_path):
    rows = site_rows()
    spec = small_spec(rows, min_sites=3, retries=1)
    store = Store.open(str(tmp_path))
    with pytest.raises(FederationError):
        fit_federated(Flaky(rows, spec, {2: {"s0"}}), spec, store, say=lambda _: None)
    changed = dict(rows)
    changed["s0"] = SiteRows.of("s0", np.random.default_rng(5).normal(size=(300, 3)), 0.2, columns=COLUMNS,
                                fingerprint="other")
    with pytest.raises(DataError, match="site s0: its data changed since the run began"):
        fit_federated(LocalSites(changed, spec), spec, store, say=lambda _: None)


def test_a_missing_site_stops_the_run_before_anything_is_trained(tmp_path):
    rows = site_rows()
    spec = small_spec({**rows, "s7": None})
    with pytest.raises(FederationError, match="sites s7 did not connect"):
        fit_federated(LocalSites(rows, spec), spec, Store.open(str(tmp_path)), say=lambda _: None)


def test_the_spec_travels_as_json():
    spec = small_spec(site_rows(), strategy="fedprox", mu=0.1)
    assert FederatedSpec.from_json(spec.to_json()) == spec


def test_a_site_check_runs_unchanged_against_the_federated_core(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from pipeline.sites import load_site_spec
    from pipeline.sites.check import check_site

    rows = site_rows()
    spec = small_spec(rows)
    store = Store.open(str(tmp_path / "store"))
    core = fit_federated(LocalSites(rows, spec), spec, store, say=lambda _: None)
    x = np.random.default_rng(3).normal(loc=1.0, scale=2.0, size=(400, 3))
    pq.write_table(pa.table({c: x[:, j] for j, c in enumerate(COLUMNS)}), tmp_path / "site.parquet")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({
        "site": "plant-9", "columns": COLUMNS, "target": {"uri": str(tmp_path / "site.parquet")},
        "observations": {"uri": str(tmp_path / "site.parquet")}, "finetune": {"probe_steps": 5}}))
    check = check_site(load_site_spec(tmp_path / "site.yaml"), Registry(store), say=lambda _: None)
    assert check.parents == [core.id] and check.config["decision"] in ("reuse", "finetune", "refit")
