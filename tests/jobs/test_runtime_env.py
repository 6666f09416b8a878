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
