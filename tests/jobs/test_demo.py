"""The one-command demo, CI-sized, on a real local Ray: decisions, registry answers, report, staleness."""

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.datasets import la_haute_borne as lhb
from pipeline.demo.run import DemoSettings, run_demo
from pipeline.jobs.prior_fit import PriorFitSpec, fit_core_prior
from pipeline.method.training import FitConfig
from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.sites import flowprior


@pytest.mark.slow
def test_the_quick_demo_answers_the_registry_questions_and_writes_its_report(local_ray, tmp_path, capsys):
    sites = Path(__file__).resolve().parents[2] / "sites"
    sweep = tmp_path / "sweep.yaml"  # two lambdas for the four turbines (the demo shortens the trials)
    sweep.write_text(yaml.safe_dump({"sites": [str(sites / f"{t}.yaml") for t in lhb.TURBINES],
                                     "space": {"lambda": {"grid": [0.003, 0.03]}}, "select": {"metric": "nll_gap"}}))
    summary = run_demo(DemoSettings(out=tmp_path / "demo", quick=True, sweep=sweep))
    store_uri = summary["store"]
    registry = Registry(Store.open(store_uri))
    core = registry.alias("core")
    assert summary["core"]["id"] == core and set(summary["sites"]) == set(lhb.TURBINES)

    for site, s in summary["sites"].items():
        check = registry.get(s["check"])
        assert check.parents == [core] and check.config["decision"] == s["decision"]
        # a site prior exactly where the decision asked for one, and the encoder aligned to the right prior
        if s["decision"] == "reuse":
            assert s["site_prior"] is None and s["aligned_to"] == core
        else:
            assert registry.get(s["site_prior"]).parents == [core] and s["aligned_to"] == s["site_prior"]
        encoder = registry.get(s["encoder"])
        assert encoder.aligned_to == s["aligned_to"] and encoder.metrics["baseline_recon"] is not None
        choice = summary["sweep"]["choices"][site]  # aligned with the sweep's choice, against the prior it used
        assert encoder.parents == [s["aligned_to"], summary["sweep"]["id"]] and choice["prior"] == s["aligned_to"]
        assert encoder.config["lambda"] == choice["lam"] and encoder.metrics["recon"] == pytest.approx(choice["recon"],
                                                                                                      rel=1e-5)

        matched = registry.get(s["match"]["encoder"])  # the comparison: registered first, same prior, mode match
        assert matched.config["align"]["mode"] == "match" and matched.aligned_to == s["aligned_to"]
        assert matched.created_at <= encoder.created_at and matched.metrics["spread"] > 0

        code, out, _ = flowprior(capsys, "registry", "aligned", site, "--json", "--store", store_uri)
        assert code == 0 and [r["id"] for r in json.loads(out)] == [s["aligned_to"]]

    pooled = summary["faults_auroc"]["2015"]["all"]
    per_site = [v for site, v in summary["faults_auroc"]["2015"].items() if site != "all"]
    assert pooled["faults"] == 16 == sum(v["faults"] for v in per_site)
    assert pooled["rows"] == sum(v["rows"] for v in per_site)
    # the impossible readings rank far above chance (measured on this quick demo, 2026-11-30: L_align 0.83,
    # the lambda = 0 reconstruction error 0.98)
    assert pooled["l_align"] > 0.7 and pooled["recon_lambda0"] > 0.9
    assert summary["faults_auroc"]["2014"]["all"]["faults"] == 61
    assert set(summary["faults_auroc"]["2014"]["all"]) >= {"l_align", "l_align_match", "recon_lambda0"}

    page = (tmp_path / "demo" / "report.html").read_text()
    for image in re.findall(r'<img src="([^"]+)"', page):
        assert (tmp_path / "demo" / image).stat().st_size > 1000
    assert len(re.findall(r"<img ", page)) == 6 and "Lineage" in page and core in page
    assert "Distribution matching" in page and "AUROC L_align (match)" in page
    assert "sweep_pareto.png" in page and "Chosen settings" in page and summary["sweep"]["id"] in page
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["core"]["id"] == core
    code, out, _ = flowprior(capsys, "registry", "stale", "--json", "--store", store_uri)
    assert code == 0 and json.loads(out) == []
    new_core = fit_core_prior(PriorFitSpec(features=str(lhb.PARQUET), columns=lhb.FEATURES, drop_nonfinite=True,
                                           latent_dim=7, projection="pca", width=32, depth=2,
                                           fit=FitConfig(steps=20, warmup=5), report_every=20),
                              Store.open(store_uri), say=lambda _: None)
    assert registry.alias("core") == new_core.id
    code, out, _ = flowprior(capsys, "registry", "stale", "--json", "--store", store_uri)
    stale = json.loads(out)
    assert sorted(r["site"] for r in stale) == sorted(lhb.TURBINES)
