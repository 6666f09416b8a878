"""Sweep specs: a good one loads with its defaults and its sites; every bad one is refused, naming file and key."""

from pathlib import Path

import pytest
import yaml

from pipeline.errors import SpecError
from pipeline.sweeps import SweepSpec, load_sweep_spec
from pipeline.sweeps.objective import Selection

ROOT = Path(__file__).resolve().parents[2]


def site_spec(folder: Path, site: str, steps: int = 300) -> str:
    path = folder / f"{site}.yaml"
    path.write_text(yaml.safe_dump({"site": site, "target": {"uri": "t.parquet"}, "observations": {"uri": "o.parquet"},
                                    "alignment": {"steps": steps}}))
    return path.name


def write(tmp_path: Path, **data) -> Path:
    base = {"sites": [site_spec(tmp_path, "a"), site_spec(tmp_path, "b")], "space": {"lambda": {"grid": [0.01, 0.1]}}}
    base.update(data)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in base.items() if v is not None}))
    return path


def test_the_shipped_lambda_sweep_loads_with_the_demo_sites():
    spec = load_sweep_spec(ROOT / "tuning" / "lambda.yaml")
    assert isinstance(spec, SweepSpec) and spec.name == "lambda"
    assert [s.site for s in spec.sites] == ["R80711", "R80721", "R80736", "R80790"]
    assert spec.space[0].name == "lambda" and spec.space[0].sampler == "grid" and spec.scheduler.type == "forecast"
    assert spec.epochs == spec.steps // spec.epoch_steps


def test_defaults_come_from_the_site_specs_and_the_file_name(tmp_path):
    spec = load_sweep_spec(write(tmp_path, space={"lambda": {"loguniform": [1e-4, 1]}, "draws": {"choice": [2, 8]}}))
    assert spec.name == "sweep" and spec.steps == 300 and spec.epoch_steps == 100 and spec.epochs == 3
    assert spec.sites[0].path == str(tmp_path / "a.yaml")  # relative to the sweep spec
    assert spec.select == Selection(metric="nll_gap", recon="median", recon_tolerance=2.0)  # the measured choice
    assert spec.to_dict()["space"] == {"lambda": {"loguniform": [1e-4, 1.0]}, "draws": {"choice": [2, 8]}}
    assert spec.resources.cpu == 1.0 and spec.max_concurrent == 0 and spec.samples == 1
    assert spec.resources.shape() == {"CPU": 1.0}  # no GPU unless asked


def test_the_alignment_mode_is_a_dimension(tmp_path):
    spec = load_sweep_spec(write(tmp_path, space={"lambda": {"grid": [0.1]}, "mode": {"grid": ["align", "match"]}}))
    assert [(d.field, d.values) for d in spec.space] == [("lam", (0.1,)), ("mode", ("align", "match"))]


def test_a_gpu_share_per_trial(tmp_path):
    spec = load_sweep_spec(write(tmp_path, space={"lambda": {"grid": [0.1]}}, resources={"cpu": 2, "gpu": 0.25}))
    assert spec.resources.shape() == {"CPU": 2.0, "GPU": 0.25}


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"sites": None}, "missing key 'sites'"),
    ({"space": None}, "missing key 'space'"),
    ({"space": {}}, "space: expected a mapping of dimensions"),
    ({"space": {"width": {"grid": [1]}}}, "unknown dimension 'width'"),
    ({"space": {"latent_dim": {"grid": [4, 8]}}}, "latent dimension is fixed by the prior"),
    ({"space": {"lambda": [0.1, 1]}}, r"space.lambda: expected one of \{grid"),
    ({"space": {"lambda": {"grid": []}}}, "space.lambda.grid: expected a non-empty list"),
    ({"space": {"lambda": {"grid": [-1.0]}}}, "space.lambda: lambda must be a finite number >= 0"),
    ({"space": {"lambda": {"loguniform": [1, 0.1]}}}, "0 < low < high"),
    ({"space": {"lambda": {"uniform": [0, 1]}}}, "unknown sampler 'uniform'"),
    ({"space": {"draws": {"loguniform": [1, 8]}}}, "draws is not a number range"),
    ({"space": {"mode": {"grid": ["kl"]}}}, "space.mode: mode values must be among align, match"),
    ({"space": {"mode": {"grid": [1]}}}, r"space.mode.grid\[0\]: expected str"),
    ({"space": {"draws": {"grid": [2.5]}}}, r"space.draws.grid\[0\]: expected int"),
    ({"space": {"lr": {"grid": [0.0]}}}, "lr must be > 0"),
    ({"name": "../escape"}, "name: invalid sweep name"),
    ({"steps": 0}, "steps: must be >= 1"),
    ({"samples": "two"}, "samples: expected int"),
    ({"scheduler": {"type": "pbt"}}, "scheduler: type must be one of forecast, asha, fifo, got 'pbt'"),
    ({"scheduler": {"reduction_factor": 1}}, "reduction_factor > 1"),
    ({"scheduler": {"grace_epochs": 5}}, "grace_epochs: 5 exceeds the 3 epochs"),
    ({"resources": {"cpu": 0}}, "resources: cpu must be > 0"),
    ({"resources": {"gpu": 2}}, r"resources: gpu is a share of one GPU per trial, in \[0, 1\]"),
    ({"resources": {"tpu": 1}}, "resources: unknown key 'tpu'"),
    ({"select": {"metric": "mmd"}}, "select: metric must be one of knn_nll, nll_gap"),
    ({"select": {"recon_tolerance": -0.1}}, "recon_tolerance must be a finite number >= 0"),
    ({"select": {"recon": "max"}}, "recon must be one of mean, median"),
    ({"sites": ["a.yaml", "a.yaml"]}, "site 'a' is listed twice"),
    ({"sites": ["missing.yaml"]}, r"sites\[0\]: .*missing.yaml: no such site spec"),
])
def test_bad_specs_are_refused_naming_the_file_and_key(tmp_path, change, message):
    path = write(tmp_path, **change)
    with pytest.raises(SpecError, match=message) as error:
        load_sweep_spec(path)
    assert str(path) in str(error.value)


def test_sites_with_different_lengths_need_the_sweep_to_set_steps(tmp_path):
    sites = [site_spec(tmp_path, "c", 300), site_spec(tmp_path, "d", 500)]
    with pytest.raises(SpecError, match=r"alignment.steps differ \(\[300, 500\]\)"):
        load_sweep_spec(write(tmp_path, sites=sites))
    assert load_sweep_spec(write(tmp_path, sites=sites, steps=400)).steps == 400


def test_a_missing_or_unreadable_sweep_spec_is_named(tmp_path):
    with pytest.raises(SpecError, match="no such sweep spec"):
        load_sweep_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("space: [unclosed")
    with pytest.raises(SpecError, match="not readable YAML"):
        load_sweep_spec(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text, message", [
    ("space: {lambda: {grid: [0.1]}}\nspace: {lambda: {grid: [1.0]}}\n", "duplicate key 'space'"),
    ("resources: {cpu: .inf}\n", r"resources.cpu: expected a finite number, got inf"),
    ("scheduler: {reduction_factor: .inf}\n", r"scheduler.reduction_factor: expected a finite number"),
    ("resources: {cpu: .nan}\n", r"resources.cpu: expected a finite number, got nan"),
    ("? [steps, epochs]\n: 1\n", r"not readable YAML \(a key must be a name, not a list"),
])
def test_yaml_surprises_are_refused(tmp_path, text, message):
    path = write(tmp_path)
    path.write_text(path.read_text() + text if "space" not in text else
                    "\n".join(line for line in path.read_text().splitlines() if not line.startswith(("space", " "))
                              ) + "\n" + text)
    with pytest.raises(SpecError, match=message):
        load_sweep_spec(path)


def test_exponents_without_a_dot_are_floats(tmp_path):
    path = write(tmp_path, space={"lr": {"grid": [0.001]}})
    path.write_text(path.read_text().replace("0.001", "1e-3"))
    assert load_sweep_spec(path).to_dict()["space"] == {"lr": {"grid": [1e-3]}}


def test_an_oversized_spec_is_refused_before_parsing(tmp_path):
    path = write(tmp_path)
    path.write_text(path.read_text() + "#" * (2 << 20) + "\n")
    with pytest.raises(SpecError, match="too large for a sweep spec"):
        load_sweep_spec(path)
