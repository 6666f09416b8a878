"""The command line's conventions (issue #31, item 6): a closed pipe, a missing store, a misspelt name,
``--version`` and ``--store`` before the command, what ``site validate`` checks and says, 1-based column
errors, what ``registry ls --json`` prints, and links in the docs that resolve."""

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from pipeline.registry import Registry
from pipeline.storage import Store
from tests.support.sites import SITE, flowprior, publish_core, small_spec

ROOT = Path(__file__).resolve().parents[1]
HISTORY = [{"step": i, "recon": 0.5, "l_align": 1.25, "knn_nll": 4.0, "spread": 0.9} for i in range(10_000)]


def bulky_store(tmp_path: Path) -> tuple[str, dict]:
    """A store whose records hold training histories, as encoders and sweeps do (far more than a pipe holds)."""
    uri = str(tmp_path / "store")
    registry = Registry(Store.open(uri))
    core = registry.register("prior", metrics={"heldout_fm": 1.5})
    encoder = registry.register("encoder", site=SITE, parents=[core.id], aligned_to=core.id,
                                config={"lambda": 0.002, "history": HISTORY, "baseline_history": HISTORY[:5]},
                                metrics={"recon": 0.01, "knn_nll": 4.2})
    sweep = registry.register("sweep", parents=[core.id], config={"trials": [
        {"site": SITE, "config": {"lam": 0.002}, "final": {"recon": 0.01}, "history": HISTORY[:50]}]})
    return uri, {"core": core, "encoder": encoder, "sweep": sweep}


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    uri, records = bulky_store(tmp_path)
    for args in (["registry", "show", records["encoder"].id], ["registry", "ls", "--json", "--full"]):
        with open(tmp_path / "err", "w+") as err:
            reader = subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--store", uri],
                                      stdout=subprocess.PIPE, stderr=err, text=True)
            first = reader.stdout.readline()  # `| head -1`: one line, then the reader goes away
            reader.stdout.close()
            code = reader.wait(timeout=120)
            err.seek(0)
            stderr = err.read()
        assert first.startswith(("{", "[")), args
        assert code == 141 and "Traceback" not in stderr and "BrokenPipeError" not in stderr, (args, code, stderr)


def test_a_missing_store_is_the_same_error_for_every_command_that_reads_one(tmp_path, capsys):
    missing = tmp_path / "typo"
    spec = str(small_spec(tmp_path))
    for args in (["registry", "check"], ["registry", "ls"], ["site", "validate", spec], ["fleet", "status"],
                 ["registry", "alias", "ls"]):
        code, out, err = flowprior(capsys, *args, "--store", str(missing))
        assert code == 2 and out == "", (args, out)
        assert f"no flowprior store at {missing} (nothing has been published there; check --store" in err, (args, err)
    assert not missing.exists()  # nothing was created


def test_a_misspelt_site_alias_or_record_names_the_near_ones_and_fails(tmp_path, capsys):
    store = str(tmp_path / "store")
    registry = Registry(Store.open(store))
    core = registry.register("prior")
    registry.register("site-check", site="R80711", parents=[core.id], config={"decision": "reuse"})
    registry.register("encoder", site="R80736", parents=[core.id], aligned_to=core.id)

    def run(*args: str) -> tuple[int, str, str]:
        return flowprior(capsys, "registry", *args, "--store", store)

    code, _, err = run("aligned", "R8071")
    assert code == 2 and f"no site R8071 in the registry at {store}; did you mean R80711" in err, err
    code, out, _ = run("aligned", "R80711")  # known, but no encoder yet: an answer, not an error
    assert code == 0 and "site R80711 has no current encoder" in out
    code, out, _ = run("aligned", "R80736", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [core.id]
    code, _, err = run("alias", "history", "cor")
    assert code == 2 and f"no alias cor in the registry at {store}; did you mean core?" in err, err
    code, _, err = run("alias", "history", "encoder.R8073")
    assert code == 2 and "did you mean encoder.R80736?" in err, err
    assert run("alias", "history", "core")[0] == 0
    code, _, err = run("ls", "--site", "R8736")
    assert code == 2 and "no site R8736 in the registry" in err and "did you mean R80736" in err, err
    code, out, _ = run("ls", "--site", "R80711", "--kind", "encoder")  # a known site: an empty answer
    assert code == 0 and out.strip() == "no records"
    code, _, err = run("show", core.id[:-1] + "x")
    assert code == 2 and f"no record '{core.id[:-1]}x'" in err and f"did you mean {core.id}?" in err, err


def test_version_and_the_store_options_before_the_command(tmp_path, capsys, monkeypatch):
    shown = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and shown.stdout.strip() == f"flowprior {version('flowprior')}"

    uri, records = bulky_store(tmp_path)
    monkeypatch.setenv("FLOWPRIOR_STORE", str(tmp_path / "elsewhere"))
    code, out, err = flowprior(capsys, "--store", uri, "registry", "ls", "--json", "--fields", "id")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [r.id for r in records.values()], err
    code, out, _ = flowprior(capsys, "--store", str(tmp_path / "typo"), "registry", "ls", "--store", uri)
    assert code == 0 and records["sweep"].id in out  # the command's own --store wins
    code, _, err = flowprior(capsys, "--store", str(tmp_path / "typo"), "fleet", "status")
    assert code == 2 and f"no flowprior store at {tmp_path / 'typo'}" in err  # the global one is used
    with pytest.raises(SystemExit) as refused:
        flowprior(capsys, "--store", uri, "runtime-env")
    assert refused.value.code == 2
    assert "--store: the runtime-env command takes no such option" in capsys.readouterr().err


def test_ls_json_leaves_out_histories_and_takes_fields_and_show_prints_one_object(tmp_path, capsys):
    uri, records = bulky_store(tmp_path)

    def run(*args: str):
        code, out, err = flowprior(capsys, "registry", *args, "--store", uri)
        assert code == 0, err
        return out

    slim = {r["id"]: r for r in json.loads(run("ls", "--json"))}
    assert "history" not in json.dumps(slim) and slim[records["encoder"].id]["config"] == {"lambda": 0.002}
    assert slim[records["sweep"].id]["config"]["trials"] == [{"site": SITE, "config": {"lam": 0.002},
                                                              "final": {"recon": 0.01}}]
    assert slim[records["encoder"].id]["metrics"] == {"recon": 0.01, "knn_nll": 4.2}
    full = {r["id"]: r for r in json.loads(run("ls", "--json", "--full"))}
    assert full[records["encoder"].id]["config"]["history"] == HISTORY
    assert len(run("ls", "--json")) * 20 < len(run("ls", "--json", "--full"))

    picked = json.loads(run("ls", "--json", "--kind", "encoder", "--fields", "id,kind,metrics.recon,metrics.nope"))
    assert picked == [{"id": records["encoder"].id, "kind": "encoder", "metrics": {"recon": 0.01, "nope": None}}]
    header, row = run("ls", "--kind", "encoder", "--fields", "id,metrics.knn_nll,site").splitlines()
    assert header.split() == ["id", "metrics.knn_nll", "site"] and row.split() == [records["encoder"].id, "4.2", SITE]
    with pytest.raises(SystemExit):
        flowprior(capsys, "registry", "ls", "--json", "--fields", "id,metric.recon", "--store", uri)
    assert "unknown field 'metric.recon'" in capsys.readouterr().err

    one = json.loads(run("show", records["encoder"].id, "--json"))
    assert isinstance(one, dict) and one["id"] == records["encoder"].id and one["config"]["history"] == HISTORY
    assert json.loads(run("show", records["encoder"].id)) == one


@pytest.mark.slow
def test_validate_holds_latent_dim_to_the_prior_and_names_steps_that_already_ran(tmp_path, capsys):
    from pipeline.data.schema import FeatureSchema
    from pipeline.datasets import la_haute_borne as lhb
    from pipeline.sites import load_site_spec
    from pipeline.sites.align import align_site
    from pipeline.sites.check import check_site
    from pipeline.sites.finetune import finetune_site

    store = str(tmp_path / "store")
    core = publish_core(store, steps=5)  # latent dimension 4
    listing = lambda: sorted(p.relative_to(tmp_path) for p in Path(store).rglob("*"))  # noqa: E731

    def spec(name: str, **overrides) -> str:
        (tmp_path / name).mkdir()
        return str(small_spec(tmp_path / name, **overrides))

    wide = spec("wide", encoder={"latent_dim": 8, "widths": [16]})
    before = listing()
    code, out, _ = flowprior(capsys, "site", "validate", wide, "--store", store)
    assert code == 1 and f"{SITE} ({wide}): PROBLEMS" in out
    assert f"problem: {wide}: encoder.latent_dim is 8 but the prior the site's encoder aligns to ({core.id}) has " \
           "dimension 4" in out, out

    dropped = spec("dropped", columns=[*lhb.FEATURES[:2], *lhb.FEATURES[3:]])  # 9 of the 10, wind_speed left out
    code, out, _ = flowprior(capsys, "site", "validate", dropped, "--store", store)
    schema = FeatureSchema.from_dict(core.config["features"])
    assert code == 1 and f"feature column 3 of 9 is {schema.columns[3]!r} but the prior was fitted with " \
                         f"{schema.columns[2]!r} there (the prior has {schema.columns[3]!r} as column 4); 9 feature " \
                         "columns given, the prior was fitted on 10" in out, out

    good = spec("good", encoder={"latent_dim": 4, "widths": [16]},
                thresholds={"finetune_gain": 0.0, "refit_fm": 1e9},  # the check decides finetune
                finetune={"steps": 10, "refit_steps": 10, "probe_steps": 5, "log_every": 5},
                alignment={"lambda": 0.002, "steps": 10, "log_every": 5, "eval_points": 200})
    code, out, _ = flowprior(capsys, "site", "validate", good, "--store", store)
    assert code == 0 and "already ran" not in out
    assert [line.split(":")[1].strip() for line in out.splitlines()[1:]] == ["check", "finetune (if the check says so)",
                                                                            "align"], out
    assert all(line.startswith("  would run: ") for line in out.splitlines()[1:]), out
    assert listing() == before  # validate wrote nothing

    registry = Registry(Store.open(store))
    site_spec = load_site_spec(good)
    check = check_site(site_spec, registry, say=lambda _: None)
    site_prior = finetune_site(site_spec, registry, say=lambda _: None)
    encoder = align_site(site_spec, registry, say=lambda _: None).record
    assert check.config["decision"] == "finetune" and encoder.aligned_to == site_prior.id
    before = listing()
    code, out, _ = flowprior(capsys, "site", "validate", good, "--store", store)
    assert code == 0 and "would run" not in out, out
    lines = out.splitlines()[1:]
    assert lines[0].startswith(f"  already ran ({check.id}): check: ")
    assert lines[1].startswith(f"  already ran ({site_prior.id}): finetune: 10 steps from {core.id}'s weights")
    assert lines[2].startswith(f"  already ran ({encoder.id}): align: ") and lines[2].endswith(f"to {site_prior.id}")
    code, out, _ = flowprior(capsys, "site", "validate", good, "--store", store, "--json")
    (report,) = json.loads(out)
    assert [(d["step"], d["record"]) for d in report["done"]] == [
        ("check", check.id), ("finetune", site_prior.id), ("align", encoder.id)] and report["plan"] == []
    assert listing() == before


# -- the docs: every relative link resolves -------------------------------------------------------------
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` ... for repeats)."""
    seen: dict[str, int] = {}
    for line in _prose(path):
        match = HEADING.match(line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@pytest.mark.parametrize("page", sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_in_the_docs_resolves(page):
    broken = []
    for target in LINK.findall("\n".join(_prose(page))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target} ({os.path.relpath(resolved, ROOT)} does not exist)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_shipped_lambda_grid_starts_at_the_site_specs_lambda_and_the_docs_show_it():
    import yaml

    from pipeline.sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(ROOT / "tuning" / "lambda.yaml")
    grid = list(spec.space[0].values)
    assert grid[0] == 0.002 and {s.alignment.lam for s in spec.sites} == {0.002}  # the best guess first
    assert len(set(grid)) == len(grid) and min(grid) < 0.001 and max(grid) >= 0.01  # spans the range around it
    documented = re.search(r"^  lambda: (\{grid: .*?\})", (ROOT / "docs" / "sweeps.md").read_text(), re.M)
    assert yaml.safe_load(documented.group(1))["grid"] == grid
