"""docs/spec-reference.md is what the dataclasses say, and names every key the spec loaders accept."""

from pathlib import Path

from pipeline import spec_reference
from pipeline.sites import spec as site_spec
from pipeline.sweeps import spec as sweep_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "spec-reference.md"


def test_the_reference_in_the_docs_is_the_generated_one():
    assert DOC.read_text() == spec_reference.reference_markdown(), \
        "docs/spec-reference.md is stale: python -m pipeline.spec_reference > docs/spec-reference.md"


def test_every_top_level_key_the_loaders_accept_is_in_the_reference():
    for spec, keys in ((site_spec.SiteSpec, site_spec.KEYS), (sweep_spec.SweepSpec, sweep_spec.KEYS)):
        listed = {key for key, _, _ in spec_reference.TOP_LEVEL[spec]}
        listed |= {n for n, _, _ in spec_reference.SECTIONS[spec]}
        assert listed == keys


def test_the_defaults_shown_are_the_dataclasses_defaults():
    text = spec_reference.reference_markdown()
    assert "| `lambda` | float | `0.002` |" in text and "| `metric` | str | `nll_gap` |" in text
    assert "| `recon_tolerance` | float | `2.0` |" in text and "| `uri` | str | required |" in text
