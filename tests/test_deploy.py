"""deploy/*.yaml: KubeRay RayJob manifests, checked against the KubeRay v1 RayJob CRD schema (a copy in
tests/fixtures, from ray-project/kuberay's ray.io_rayjobs.yaml, Apache-2.0; its source commit is in the file).

Checked here: the manifests parse; they validate against the CRD's openAPIV3Schema (types, enums,
required fields, quantity patterns); every field they set exists in that schema (Kubernetes' structural
schemas accept unknown fields silently, and the API server would prune them); names are DNS-1123; the
runtime_env's pip list is `flowprior runtime-env`'s; every entrypoint command parses with flowprior's CLI;
Ray's token auth is on (``authOptions: {mode: token}``, in the fixture's CRD since KubeRay v1.5.1).
Not checked: admission by a live API server and the KubeRay operator (no cluster here), the image, and
that the code archive URL exists.
"""

import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.version import Version

from pipeline.cli import build_parser
from pipeline.jobs.runtime_env import requirements

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy").glob("rayjob-*.yaml"))
CRD = json.loads(gzip.decompress((Path(__file__).parent / "fixtures" / "kuberay_rayjob_v1_schema.json.gz")
                                 .read_bytes()))
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def unknown_fields(value: object, schema: dict, path: str = "") -> list[str]:
    """Paths in ``value`` that ``schema`` does not declare (maps follow ``additionalProperties``)."""
    if isinstance(value, dict):
        if "properties" in schema:
            return [p for key, item in value.items() for p in
                    ([f"{path}.{key}"] if key not in schema["properties"]
                     else unknown_fields(item, schema["properties"][key], f"{path}.{key}"))]
        if isinstance(schema.get("additionalProperties"), dict):
            return [p for key, item in value.items()
                    for p in unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")]
        return []  # a free-form object (metadata, x-kubernetes-preserve-unknown-fields)
    if isinstance(value, list):
        items = schema.get("items", {})
        return [p for i, item in enumerate(value) for p in unknown_fields(item, items, f"{path}[{i}]")]
    return []


def test_there_is_a_prior_fit_and_a_site_manifest():
    assert [m.name for m in MANIFESTS] == ["rayjob-prior-fit.yaml", "rayjob-site-align.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_fits_the_kuberay_v1_rayjob_schema(path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == f"{CRD['group']}/{CRD['version']}" and manifest["kind"] == CRD["kind"]
    assert DNS_1123.match(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    jsonschema.validate(manifest, CRD["openAPIV3Schema"])
    assert unknown_fields(manifest, CRD["openAPIV3Schema"]) == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_runs_flowprior_on_a_stock_image_with_cpu_and_gpu_groups(path):
    spec = yaml.safe_load(path.read_text())["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["pip"]["packages"] == requirements()  # `flowprior runtime-env`'s list, Ray/torch excluded
    assert runtime_env["working_dir"].startswith("https://")  # the submitter pod has no local checkout
    parser = build_parser()
    for command in spec["entrypoint"].split("&&"):
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "pipeline"], command
        parser.parse_args(words[3:])  # every flag exists (argparse exits on an unknown one)
    assert spec["entrypointNumCpus"] >= 1  # the driver never lands on the head
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in cluster["workerGroupSpecs"]}
    assert gpus == {"cpu": None, "gpu": "1"}


def test_the_field_check_catches_a_misspelt_field():
    manifest = yaml.safe_load(MANIFESTS[0].read_text())
    manifest["spec"]["entrypointNumCPUs"] = 1
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert unknown_fields(manifest, CRD["openAPIV3Schema"]) == [
        ".spec.rayClusterSpec.workerGroupSpecs[0].maxReplica", ".spec.entrypointNumCPUs"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_turns_on_ray_token_auth_the_way_kuberay_documents_it(path):
    """Whoever reaches an unauthenticated head's job API runs code with the bucket's role. KubeRay (>= v1.5.1)
    turns Ray's token auth on with ``rayClusterSpec.authOptions.mode: token``: it generates a Secret named after
    the RayCluster (key ``auth_token``) and sets RAY_AUTH_MODE and RAY_AUTH_TOKEN on every Ray container and on
    the RayJob's submitter. It needs ``rayVersion`` >= 2.52.0; Kubernetes-delegated auth is not for RayJobs."""
    auth_schema = CRD["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"][
        "authOptions"]
    assert "token" in auth_schema["properties"]["mode"]["enum"]  # the fixture's CRD has the field
    cluster = yaml.safe_load(path.read_text())["spec"]["rayClusterSpec"]
    assert cluster.get("authOptions") == {"mode": "token"}, cluster.get("authOptions")
    assert Version(cluster["rayVersion"]) >= Version("2.52.0")
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    overrides = [env for group in groups for container in group["template"]["spec"]["containers"]
                 for env in container.get("env", []) if env["name"].startswith("RAY_AUTH")]
    assert overrides == []  # nothing turns it off again or puts a token into the file
