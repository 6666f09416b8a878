"""cluster.yaml passes Ray's own cluster-launcher validation and has the layout docs/operations.md promises."""

from pathlib import Path

import jsonschema
import pytest
import yaml

# Ray's private API, on purpose: Ray has no public way to validate a cluster-launcher config (ray.autoscaler.sdk
# only launches clusters), and these are the functions `ray up` itself runs on the file. If a Ray upgrade moves
# them, this test fails at import, which is the signal to look again.
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
    # a stock cluster: Ray and torch on every node, flowprior arrives with each job's runtime_env
    assert any("ray[default,train,tune]" in c and "torch" in c for c in config["setup_commands"])
    assert not any("flowprior" in c for c in config["setup_commands"]) and "file_mounts" not in load()


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


def _placed_on(demands: list[dict]) -> dict[str, int]:
    """Node types the autoscaler (its own scheduler and scorer, as it runs on `ray up`'s head) would start
    for ``demands`` on a cluster that has only its head."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    config = prepare_config(load())
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    nodes, unplaced = get_nodes_for(config["available_node_types"], {config["head_node_type"]: 1},
                                    config["head_node_type"], 100, demands, scorer)
    assert not unplaced, unplaced
    return dict(nodes)


def test_the_head_takes_no_work_and_cpu_work_starts_cpu_workers_not_gpu_ones():
    from pipeline.jobs.prior_fit_spec import PriorFitSpec, worker_resources
    from pipeline.jobs.site_tasks import site_task_resources
    from pipeline.sweeps import load_sweep_spec

    config = prepare_config(load())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert all("--num-cpus=0" in c for c in config["head_start_ray_commands"] if "ray start" in c)

    trials = load_sweep_spec(Path(__file__).resolve().parents[1] / "tuning" / "lambda.yaml").resources
    driver = {"CPU": 1}  # the documented --entrypoint-num-cpus 1
    # 40 sites, a sweep's trials and the jobs' drivers: CPU workers only, however many
    assert set(_placed_on([site_task_resources()] * 40)) == {"cpu_worker"}
    assert set(_placed_on([trials.shape()] * 36 + [driver] * 3)) == {"cpu_worker"}
    # GPU work: Ray Train workers with --gpu, site tasks and trials with a GPU share
    spec = PriorFitSpec(features="s3://bucket/features/", gpu=True, workers=4)
    assert _placed_on([worker_resources(spec, use_gpu=True)] * 4) == {"gpu_worker": 4}
    assert _placed_on([site_task_resources(0.25)] * 8) == {"gpu_worker": 2}
    assert set(_placed_on([trials.shape(gpu=0.5)] * 4)) == {"gpu_worker"}
