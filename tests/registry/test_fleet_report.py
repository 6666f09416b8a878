"""``fleet report``: the page is whole without a server, and a real headless Chromium renders it cleanly."""

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.registry import Registry
from pipeline.registry.fleet_report import GRAPH_NODES, write_fleet_report
from tests.support.chromium import CHROMIUM, rendered
from tests.support.fleet import adapter_pair, build_fleet
from tests.support.null_metrics import null_metric_fleet


def test_the_report_links_only_to_files_it_wrote(store, tmp_path):
    registry = Registry(store)
    fleet = build_fleet(registry)
    page = write_fleet_report(registry, tmp_path / "report")
    text = page.read_text()
    links = {line.split('"', 1)[0] for line in text.split('href="')[1:]}
    assert links and all((page.parent / link).is_file() for link in links)  # relative, and every one is there
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing loads from elsewhere
    record = json.loads((page.parent / "records" / f"{fleet['e3'].id}.json").read_text())
    assert record["aligned_to"] == fleet["s3"].id
    assert all(f'data-site="{site}"' in text for site in ("s1", "s2", "s3"))


def test_the_report_shows_how_each_site_prior_is_stored_and_the_fleets_total(tmp_path):
    from pipeline.storage import Store

    registry = Registry(Store.open(str(tmp_path / "st")))
    build_fleet(registry)
    adapter = adapter_pair(registry, tmp_path)["adapter"]
    registry.register("encoder", site="s9", parents=[adapter.id], aligned_to=adapter.id)
    text = write_fleet_report(registry, tmp_path / "report").read_text()
    row = lambda site: text.split(f'data-site="{site}"', 1)[1].split("</tr>", 1)[0]  # noqa: E731
    assert f"records/{adapter.id}.json" in row("s9") and "adapter, 150.2 kB" in row("s9")
    assert "full, n/a" in row("s1") and "adapter" not in row("s2")
    assert '<span id="site-priors">3 current (1 adapter), 150.2 kB in the store (+2 of unknown size)</span>' in text
    assert "site prior s9: adapter 150.2 kB" in text and "site prior s1: full n/a" in text  # the graph's boxes


def test_many_site_priors_are_grouped_in_the_graph(tmp_path):
    from pipeline.storage import Store

    registry = Registry(Store.open(str(tmp_path / "st")))
    core = registry.register("prior")
    for i in range(GRAPH_NODES + 5):
        site_prior = registry.register("site-prior", site=f"site{i:03d}", parents=[core.id])
        registry.register("encoder", site=f"site{i:03d}", parents=[site_prior.id], aligned_to=site_prior.id)
    text = write_fleet_report(registry, tmp_path / "report").read_text()
    assert f"{GRAPH_NODES + 5} site priors" in text and text.count('data-site="') == GRAPH_NODES + 5


def test_fleet_report_shows_null_metrics_as_n_a(tmp_path, capsys):
    uri, fleet = null_metric_fleet(tmp_path)
    assert main(["fleet", "report", "--out", str(tmp_path / "report"), "--store", uri]) == 0
    text = (tmp_path / "report" / "index.html").read_text()
    s1 = text.split('data-site="s1"', 1)[1].split("</tr>", 1)[0]
    assert "probe_gain n/a, fm_ratio n/a, nll_gap n/a, mmd 0.02" in s1 and "lam n/a" in s1 and "objective n/a" in s1
    s2 = text.split('data-site="s2"', 1)[1].split("</tr>", 1)[0]
    assert "probe_gain n/a, fm_ratio n/a, nll_gap n/a, mmd n/a" in s2
    check = json.loads((tmp_path / "report" / "records" / f"{fleet['check'].id}.json").read_text())
    assert check["metrics"]["probe_gain"] is None


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    from pipeline.storage import Store

    registry = Registry(Store.open(str(tmp_path / "st")))
    fleet = build_fleet(registry)
    registry.register("site-check", site="s2", parents=[fleet["core2"].id], config={"decision": "reuse"},
                      metrics={"probe_gain": 0.01, "fm_ratio": 1.02, "nll_gap": 0.1, "mmd": 0.01})
    registry.register("sweep", config={"choices": {"s1": {"mode": "align", "lam": 0.004, "lr": 1e-3, "draws": 4}}})
    page_path = write_fleet_report(registry, tmp_path / "report")
    with rendered(page_path) as (page, problems):
        sites = page.locator("tr.site").evaluate_all("rows => rows.map(r => r.dataset.site)")
        stale = page.locator("tr.site.stale").evaluate_all("rows => rows.map(r => r.dataset.site)")
        counts = page.locator("#counts").inner_text()
        boxes = page.locator("svg rect").count()
        page.screenshot(path=str(tmp_path / "fleet_report.png"), full_page=True)
        page.locator("tr.site a").first.click()  # a record link opens its JSON
        opened = json.loads(page.locator("body").inner_text())
    assert problems == []
    assert sites == ["s1", "s2", "s3"] and stale == ["s1", "s2"] and counts == "3 sites, 2 stale"
    assert boxes == 4  # core v1, core v2 (current), the site priors of s1 and s3
    assert opened["id"] == fleet["e1"].id
    assert Path(tmp_path / "fleet_report.png").stat().st_size > 10_000
