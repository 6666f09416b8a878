"""Site specs: the shipped ones load and read; every kind of bad spec is refused naming file and key."""

from pathlib import Path

import pytest

from pipeline.datasets import la_haute_borne as lhb
from pipeline.errors import SpecError
from pipeline.sites import Thresholds, load_site_spec

SITES = Path(__file__).resolve().parents[2] / "sites"
GOOD = """\
site: plant-7
columns: [a, b]
target: {uri: data.parquet, filters: {line: 2}}
observations: {uri: s3://bucket/obs/, drop_nonfinite: true}
encoder: {latent_dim: 2, widths: [16, 8]}
alignment: {lambda: 0.5, steps: 10}
thresholds: {finetune_gain: 0.05}
finetune: {steps: 100}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_the_shipped_specs_load_and_their_data_reads():
    specs = [load_site_spec(p) for p in sorted(SITES.glob("*.yaml"))]
    assert [s.site for s in specs] == list(lhb.TURBINES)
    regimes = {}
    for spec in specs:
        assert Path(spec.target.uri) == lhb.PARQUET and spec.target.columns == lhb.FEATURES and spec.description
        regime = {k: v for k, v in spec.target.filters.items() if k not in ("site", "year", "fault")}
        assert spec.target.filters == {"site": spec.site, "year": 2015, "fault": False, **regime}
        assert spec.observations.filters == {"site": spec.site, "year": 2015, **regime}
        regimes[spec.site] = regime
    # two turbines as they run, one in high wind only, one in low wind only (the demo's reuse x2, finetune, refit)
    assert regimes == {"R80711": {"wind_speed": {">": 1.0}}, "R80721": {}, "R80736": {},
                       "R80790": {"wind_speed": {"<": -0.5}}}
    healthy = specs[2]
    target, observations = healthy.target.read(), healthy.observations.read()
    assert target.values.shape[1] == len(lhb.FEATURES)
    assert len(observations.values) - len(target.values) == 4  # R80736's four 2015 fault rows are observations only
    windy = specs[0].target.read()
    assert len(windy.values) < len(target.values) / 4 and windy.values[:, lhb.FEATURES.index("wind_speed")].min() > 1.0


def test_a_spec_resolves_relative_paths_and_keeps_defaults(tmp_path):
    spec = load_site_spec(write(tmp_path, GOOD))
    assert spec.site == "plant-7" and spec.target.uri == str(tmp_path / "data.parquet")
    assert spec.observations.uri == "s3://bucket/obs/" and spec.observations.columns == ("a", "b")
    assert spec.alignment.lam == 0.5 and spec.alignment.steps == 10 and spec.alignment.draws == 4
    assert spec.encoder.widths == (16, 8) and spec.thresholds == Thresholds(finetune_gain=0.05)



def test_a_spec_without_an_alignment_block_gets_the_measured_setting_not_a_collapsing_one(tmp_path):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("alignment:"))
    spec = load_site_spec(write(tmp_path, text))
    assert (spec.alignment.lam, spec.alignment.steps, spec.alignment.mode) == (0.002, 1500, "align")


@pytest.mark.parametrize("change, message", [
    (("site: plant-7", "site: ../etc"), "site"),
    (("site: plant-7\n", ""), "missing key 'site'"),
    (("alignment: {lambda: 0.5", "alignment: {lambda: high"), "alignment.lambda: expected float"),
    (("alignment: {lambda: 0.5", "alignment: {lambda: -1"), "lambda must be a finite number >= 0"),
    (("alignment: {lambda: 0.5", "alignment: {lamda: 0.5"), "unknown key 'lamda' (known: aux_lr, aux_steps, "
                                                            "batch_size, draws, eval_points, lambda"),
    (("thresholds: {finetune_gain: 0.05}", "thresholds: {refit_fm: 0.1}"), "refit_fm must be > 1"),
    (("widths: [16, 8]", "widths: [16, 0]"), "encoder"),
    (("widths: [16, 8]", "widths: 16"), "encoder.widths: expected a non-empty list"),
    (("columns: [a, b]", "colums: [a, b]"), "unknown key 'colums'"),
    (("target: {uri: data.parquet", "target: {path: data.parquet"), "target: unknown key 'path'"),
    (("encoder: {latent_dim: 2", "encoder: {latent_dim: true"), "encoder.latent_dim: expected int"),
    (("finetune: {steps: 100}", "finetune: {method: lora}"), "method must be one of adapter, full, got 'lora'"),
    (("finetune: {steps: 100}", "finetune: {rank: 0}"), "adapter rank must be a positive integer, got 0"),
])
def test_bad_specs_name_the_file_and_the_key(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(SpecError, match="site.yaml") as error:
        load_site_spec(path)
    assert message in str(error.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(SpecError, match="no such site spec"):
        load_site_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not readable YAML"):
        load_site_spec(write(tmp_path, "site: [unclosed"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_site_spec(write(tmp_path, "- a list"))


def test_a_fine_tune_is_an_adapter_by_default_and_full_keeps_the_step_names_from_before_adapters(tmp_path):
    from dataclasses import asdict, replace

    from pipeline.registry.registry import settings_digest
    from pipeline.sites.steps import step_name

    spec = load_site_spec(write(tmp_path, GOOD))
    assert (spec.finetune.method, spec.finetune.rank, spec.finetune.adapter().rank) == ("adapter", 8, 8)
    full = replace(spec, finetune=replace(spec.finetune, method="full"))
    assert full.finetune.adapter() is None
    before = {k: v for k, v in asdict(spec.finetune).items() if k not in ("method", "rank")}  # the section then
    sections = {"target": asdict(spec.target), "finetune": before, "seed": spec.seed}
    digest = settings_digest({"step": "finetune", "spec": sections, "prior": "prior-x", "data": ["f"], "mode": "m"})
    assert step_name("finetune", full, "prior-x", ["f"], mode="m") == f"plant-7.finetune.{digest}"
    assert step_name("finetune", spec, "prior-x", ["f"], mode="m") != f"plant-7.finetune.{digest}"
    refit = settings_digest({"step": "finetune", "spec": sections, "prior": "prior-x", "data": ["f"], "mode": "refit"})
    assert step_name("finetune", spec, "prior-x", ["f"], mode="refit") == f"plant-7.finetune.{refit}"  # always whole


def test_an_image_site_asks_for_a_conv_encoder_and_an_mlp_one_keeps_the_align_step_names_from_before(tmp_path):
    from dataclasses import asdict

    from pipeline.method.configs import EncoderLayout
    from pipeline.registry.registry import settings_digest
    from pipeline.sites.steps import step_name

    spec = load_site_spec(write(tmp_path, GOOD))
    before = {"latent_dim": 2, "widths": [16, 8]}  # the encoder section then
    sections = {"target": asdict(spec.target), "observations": asdict(spec.observations), "encoder": before,
                "seed": spec.seed}
    digest = settings_digest({"step": "align", "spec": sections, "prior": "prior-x", "data": ["f"]})
    assert step_name("align", spec, "prior-x", ["f"]) == f"plant-7.align.{digest}"

    images = load_site_spec(write(tmp_path, GOOD.replace(
        "encoder: {latent_dim: 2, widths: [16, 8]}",
        "encoder: {latent_dim: 2, kind: conv, image_shape: [1, 28, 28], widths: [16, 32], kl: 0.001}")))
    assert images.encoder.layout() == EncoderLayout("conv", (16, 32), (1, 28, 28), 0.001)
    assert step_name("align", images, "prior-x", ["f"]) != step_name("align", spec, "prior-x", ["f"])


@pytest.mark.parametrize("encoder, message", [
    ("{kind: conv, widths: [16]}", "encoder: a conv encoder needs image_shape [channels, height, width], got None"),
    ("{kind: conv, image_shape: [1, 28, 28], widths: [8, 16, 32]}", "divisible by 8, got image_shape [1, 28, 28]"),
    ("{kind: conv, image_shape: [28, 28]}", "needs image_shape [channels, height, width], got (28, 28)"),
    ("{image_shape: [1, 28, 28]}", "image_shape is for kind conv"),
    ("{kind: vit}", "encoder kind must be one of mlp, conv, got 'vit'"),
    ("{kl: -0.1}", "encoder kl must be a finite number >= 0"),
])
def test_bad_image_encoders_name_the_file_and_what_is_wrong(tmp_path, encoder, message):
    path = write(tmp_path, GOOD.replace("encoder: {latent_dim: 2, widths: [16, 8]}", f"encoder: {encoder}"))
    with pytest.raises(SpecError, match="site.yaml") as error:
        load_site_spec(path)
    assert message in str(error.value)
