import subprocess
import sys

import pytest

from pipeline.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120)


def test_help_explains_the_toy_command():
    result = run_cli("toy", "--help")
    assert result.returncode == 0
    for word in ("--distribution", "mog", "swissroll", "--quick", "--aux-steps", "metrics.json"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["toy", "--distribution", "gauss"], "invalid choice: 'gauss'"),
        (["toy", "--distribution", "mog", "--aux-steps", "0"], "expected a positive integer"),
        (["toy", "--distribution", "mog", "--width", "0"], "expected a positive integer"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(args, message, tmp_path):
    result = run_cli(*args, "--out", str(tmp_path / "out")) if args[0] == "toy" else run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_console_script_entry_point_is_main():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "flowprior"]
    assert script.load() is main


@pytest.mark.parametrize("args, message", [
    (["--features", "/nonexistent/x.parquet"], "no such file or directory"),
    (["--features", "x.parquet", "--name", "../up"], "invalid run name '../up'"),
    (["--features", "x.parquet", "--workers", "0"], "expected a positive integer"),
    (["--features", "x.parquet", "--filter", "site"], "expected COLUMN=VALUE"),
])
def test_prior_fit_bad_input_fails_before_any_cluster_work(args, message, tmp_path):
    result = run_cli("prior", "fit", *args, "--store", str(tmp_path / "store"))
    assert result.returncode == 2 and message in result.stderr
    assert "Started a local Ray" not in result.stdout + result.stderr
    assert not (tmp_path / "store").exists()


def test_prior_fit_help_explains_resume_and_submission():
    result = run_cli("prior", "fit", "--help")
    for word in ("--features", "--workers", "--gpu", "--name", "resume", "ray job submit", "--store", "--address"):
        assert word in result.stdout


def test_sweep_help_and_a_bad_sweep_spec_fail_before_any_work(tmp_path):
    result = run_cli("sweep", "--help")
    assert result.returncode == 0
    for word in ("SWEEP.yaml", "--report", "--json", "--name", "resumes", "ASHA"):
        assert word in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: []\nspace: {lambda: {grid: [0.1]}}\n")
    result = run_cli("sweep", str(bad), "--store", str(tmp_path / "store"))
    assert result.returncode == 2 and f"{bad}: sites: expected a non-empty list" in result.stderr
    assert not (tmp_path / "store").exists()  # nothing written, no Ray started
    result = run_cli("site", "align", "--help")
    assert result.returncode == 0 and "--from-sweep" in result.stdout


def test_site_validate_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["site", "validate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Writes nothing" in text and "docs/spec-reference.md" in text


def test_exactly_the_error_family_is_reported_without_a_traceback(monkeypatch, tmp_path, capsys):
    from pipeline.cli import registry
    from pipeline.errors import RegistryError, StoreError

    store = ["--store", str(tmp_path)]
    raised: list[BaseException] = []

    def fails(args):
        raise raised[-1]

    monkeypatch.setattr(registry, "cmd_check", fails)  # stands in for a handler that meets each error
    raised.append(RegistryError("record abc: not a valid record"))
    assert main(["registry", "check", *store]) == 2
    assert capsys.readouterr().err == "flowprior registry: error: record abc: not a valid record\n"
    raised.append(StoreError("s3://bucket/p: the store does not answer"))
    assert main(["registry", "check", *store]) == 1
    assert "error: s3://bucket/p: the store does not answer" in capsys.readouterr().err
    raised.append(ValueError("a bug, not the user's input"))
    with pytest.raises(ValueError, match="a bug"):  # propagates: the traceback is shown, exit 1
        main(["registry", "check", *store])


@pytest.mark.parametrize("out, message", [
    ("s3://b/x", "--out s3://b/x: the fleet report is a local folder; write it here and copy it with "
                 "`aws s3 sync DIR s3://b/x`"),
    ("taken.html", "--out taken.html: taken.html is a file; the fleet report is a folder"),
    ("taken.html/report", "--out taken.html/report: taken.html is a file; the fleet report is a folder"),
])
def test_fleet_report_refuses_an_out_that_is_not_a_local_folder(out, message, tmp_path, monkeypatch, capsys):
    from pipeline.registry import Registry
    from pipeline.storage import Store
    from tests.support.fleet import build_fleet

    build_fleet(Registry(Store.open(str(tmp_path / "store"))))
    monkeypatch.chdir(tmp_path)  # a relative --out, as typed
    (tmp_path / "taken.html").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["fleet", "report", "--out", out, "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flowprior fleet: error: {message}") and err.count("\n") == 1  # one line, no traceback
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written (no ./s3:/b/x)
    assert (tmp_path / "taken.html").read_text() == "mine"


def test_prior_fit_and_sweep_print_null_or_missing_numbers_as_n_a(tmp_path):
    from pipeline.cli.prior import fitted
    from pipeline.cli.sweep import choice_lines
    from pipeline.registry import Record
    from pipeline.storage import Store

    digest = "e" * 64
    record = Record.new("prior", metrics={"heldout_fm": float("nan")}, artifact=f"artifacts/{digest}.safetensors",
                        hash=digest)  # the NaN is stored as null; sliced_w2 is missing
    assert "held-out FM n/a  sliced W2 n/a  artifact " in fitted(record, Store.open(str(tmp_path)))
    header, row = choice_lines({"s1": {"mode": "align", "lam": None, "lr": 1e-3, "draws": 4, "feasible": True}})
    assert row.split() == ["s1", "align", "n/a", "0.001", "4", *["n/a"] * 5, "within"]
    assert len(row) - len("within") == len(header) - len("bound")  # n/a keeps the columns aligned
