"""``flowprior federated``: what a site lead and a platform team see before any Flower process starts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.s3server import free_ports


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "federated", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_says_what_each_side_runs():
    top = run_cli("--help")
    assert top.returncode == 0 and "join" in top.stdout and "fit" in top.stdout and "SuperLink" in top.stdout
    fit = run_cli("fit", "--help")
    for flag in ("--sites", "--superlink", "--min-sites", "--local-steps", "--strategy", "--dp-epsilon", "--name"):
        assert flag in fit.stdout


@pytest.mark.parametrize("args, message", [
    (["--sites", "a,b,a"], "names a site twice: a, b, a"),
    (["--sites", "a,b", "--min-sites", "3"], "min_sites must be between 1 and the 2 sites"),
    (["--sites", "a", "--dp-epsilon", "2"], "--dp-epsilon must be in (0, 1]"),
    (["--sites", "../a"], "site id"),
])
def test_a_bad_fit_is_refused_before_anything_starts(args, message, tmp_path):
    result = run_cli("fit", *args, "--superlink", "127.0.0.1:1", "--insecure", "--store", str(tmp_path / "store"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "store").exists()


def test_a_superlink_that_does_not_answer_is_an_error_naming_it(tmp_path):
    port, = free_ports(1)
    result = run_cli("fit", "--sites", "a", "--superlink", f"127.0.0.1:{port}", "--insecure", "--store",
                     str(tmp_path / "store"), timeout=300)
    assert result.returncode == 1 and f"flwr run failed on the SuperLink at 127.0.0.1:{port}" in result.stderr \
        and "unavailable" in result.stderr, result.stdout + result.stderr


def test_join_refuses_a_spec_it_cannot_read_naming_the_file(tmp_path):
    result = run_cli("join", "--site-spec", str(tmp_path / "nope.yaml"), "--superlink", "127.0.0.1:1", "--insecure")
    assert result.returncode == 2 and "nope.yaml" in result.stderr, result.stderr
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": np.arange(50.0), "b": [float("nan")] * 50}), table)
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump({"site": "plant-1", "target": {"uri": str(table)},
                                    "observations": {"uri": str(table)}}))
    result = run_cli("join", "--site-spec", str(spec), "--superlink", "127.0.0.1:1", "--insecure")
    assert result.returncode == 2 and "rows.parquet" in result.stderr and "column 'b'" in result.stderr, \
        result.stderr  # a NaN in the target: the site lead learns it here, not from a failed round
