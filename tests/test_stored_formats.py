"""What an earlier flowprior stored still reads: a store written before the #32 refactor (commit a25c792, see
``tests/fixtures/store-v1/README.md``), its records, aliases, snapshot, artifacts and training checkpoints,
loaded with today's code and compared with what that code computed from them (``expected.json``). Its two
training checkpoints (a Ray Train worker's folder, a sweep trial's encoder state) are resumed in
``tests/method/test_training_state.py``."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.registry import CORE_ALIAS, Registry
from pipeline.registry.check import check
from pipeline.sites.models import load_encoder, load_prior
from pipeline.storage import Store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "store-v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
X = torch.linspace(-2, 2, 12).reshape(3, 4)  # (3, d1): the points the old code evaluated each prior's velocity at
T = torch.tensor([0.1, 0.5, 0.9])


@pytest.fixture
def registry(tmp_path) -> Registry:
    """A copy of the fixture store (nothing a test does may change the checked-in files)."""
    shutil.copytree(FIXTURE / "store", tmp_path / "store")
    return Registry(Store.open(str(tmp_path / "store")))


def test_every_record_alias_and_snapshot_of_the_old_store_checks_and_answers_as_before(registry):
    e = EXPECTED
    report = check(registry)
    assert report.ok, report.problems
    ids = {r.id for r in registry.records()}
    assert ids == {e[k] for k in ("core", "core2", "check", "site_prior", "encoder", "sweep")}
    assert [m.target for m in registry.alias_history(CORE_ALIAS)] == [e["core"], e["core2"], e["core"]]
    assert registry.alias_history(CORE_ALIAS)[-1].reason == "rollback for the fixture"
    assert [r.id for r in registry.lineage(e["encoder"])] == [e["encoder"], e["site_prior"], e["core"]]
    assert registry.aligned("R80711").id == e["site_prior"] and registry.stale() == []
    # named runs keep their ids and settings digests: a rerun of the same settings meets its record
    core2 = registry.find_run("prior", "fixture-fit")
    assert core2.id == e["core2"] and registry.same_run(core2, core2.fingerprint, {"steps": 20}) == core2
    sweep = registry.find_run("sweep", "fixture-sweep")
    assert registry.same_run(sweep, None, {"lam": [0.1, 1.0]}).id == e["sweep"]


def test_the_old_priors_and_encoder_load_and_compute_what_they_did(registry):
    e = EXPECTED
    for key in ("core", "site_prior"):
        velocity = load_prior(registry, e[key]).velocity(X, T)
        torch.testing.assert_close(velocity, torch.tensor(e[f"{key}_velocity"]), rtol=0, atol=1e-6)
    latents = load_encoder(registry, e["encoder"]).encode(torch.tensor(e["observations"]))
    torch.testing.assert_close(latents, torch.tensor(e["encoder_latents"]), rtol=0, atol=1e-6)
