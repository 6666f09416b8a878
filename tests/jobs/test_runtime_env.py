"""The runtime_env that brings flowprior to a stock Ray cluster, with and without optional extras."""

import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.jobs.runtime_env import requirements, runtime_env


def test_an_extra_adds_its_requirements_without_markers_and_an_unknown_one_is_refused():
    base = requirements()
    assert not any(Requirement(r).name in ("ray", "torch", "mlflow-skinny", "pytest") for r in base)
    with_mlflow = runtime_env(extras=("mlflow",))["pip"]["packages"]
    added = [r for r in with_mlflow if r not in base]
    assert [Requirement(r).name for r in added] == ["mlflow-skinny"] and all(";" not in r for r in with_mlflow)
    with pytest.raises(ValueError, match="unknown extra test; expected one of mlflow"):
        runtime_env(extras=("test",))


def test_the_cli_writes_the_extra_into_the_yaml():
    result = subprocess.run([sys.executable, "-m", "pipeline", "runtime-env", "--extra", "mlflow"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    packages = yaml.safe_load(result.stdout)["pip"]["packages"]
    assert any(Requirement(p).name == "mlflow-skinny" for p in packages)


@pytest.mark.parametrize("flag", ["--index-url", "--find-links"])
def test_a_package_source_with_credentials_is_refused_and_nothing_is_written(tmp_path, flag):
    """Ray keeps a job's runtime_env in its metadata (the dashboard and `ray job list` show it): a token in a pip
    URL would be readable by everyone who can list jobs, so it is refused, as credentials in every other URI are."""
    out = tmp_path / "runtime_env.yaml"
    secret = "s3cr3t-t0ken"
    result = subprocess.run([sys.executable, "-m", "pipeline", "runtime-env", "--out", str(out),
                             flag, f"https://ci-bot:{secret}@pypi.example.com/simple"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert not out.exists()
    assert secret not in result.stdout + result.stderr and "ci-bot" not in result.stdout + result.stderr
    message = result.stderr
    assert f"{flag} https://***@pypi.example.com/simple" in message, message
    assert "pip.conf" in message and "PIP_INDEX_URL" in message and "netrc" in message, message


def test_a_package_source_without_credentials_goes_into_pip_install_options():
    env = runtime_env(["--index-url=https://pypi.example.com/simple", "--find-links=/wheels"])
    assert env["pip"]["pip_install_options"][-2:] == ["--index-url=https://pypi.example.com/simple",
                                                      "--find-links=/wheels"]
