"""cluster.yaml passes Ray's own cluster-launcher validation and has the layout the README promises."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_validation():
    config = prepare_config(load())  # merges Ray's AWS defaults, as `ray up` does
    validate_config(config)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    nodes = config["available_node_types"]
    assert "GPU" not in nodes[config["head_node_type"]]["resources"]
    gpu = nodes["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 < gpu["max_workers"]
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert any("pip install" in c and "~/flowprior" in c for c in config["setup_commands"])
    assert config["file_mounts"]["~/flowprior"] == "."


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].update(max_worker=8),  # a typo'd key
    lambda c: c.update(head_node_type="cpu_head"),  # names no node type
    lambda c: c.update(max_workers=-1),
])
def test_rays_validation_catches_broken_variants(break_it):
    config = load()
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(config))
