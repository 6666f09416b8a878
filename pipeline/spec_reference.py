"""The reference table of every site-spec and sweep-spec key with its type and default, generated from the
dataclasses that load them (so the docs cannot drift from the code; a test compares the two).

    python -m pipeline.spec_reference > docs/spec-reference.md
"""

from __future__ import annotations

import dataclasses
import inspect

from pipeline.method.configs import AlignConfig
from pipeline.sites.spec import DataSource, EncoderSettings, FinetuneSettings, SiteSpec, Thresholds
from pipeline.sweeps.objective import Selection
from pipeline.sweeps.spec import Resources, Scheduler, SweepSpec

RENAMES = {AlignConfig: {"lam": "lambda"}}  # YAML key where it differs from the field name
TOP_LEVEL = {  # the keys of a spec's top level that are not sections, with their YAML types
    SiteSpec: [("site", "str", "required: the site id (letters, digits, `-_.`)"),
               ("description", "str", "none: one line saying what the site is, shown in reports"),
               ("columns", "list of str", "all numeric columns but id/site/time: both tables' feature columns"),
               ("seed", "int", "0")],
    SweepSpec: [("name", "str", "the file name"),
                ("sites", "list of paths", "required: site specs, relative to this file"),
                ("space", "mapping", "required: `lambda`, `lr`, `draws`, `mode`, each with one of `grid`, "
                 "`choice`, `loguniform`: [...]"),
                ("steps", "int", "the site specs' `alignment.steps`"), ("samples", "int", "1"),
                ("epoch_steps", "int", "100"), ("max_concurrent", "int", "0 (as many as fit)")],
}
SECTIONS = {
    SiteSpec: [("target", DataSource, True), ("observations", DataSource, True), ("encoder", EncoderSettings, False),
               ("alignment", AlignConfig, False), ("finetune", FinetuneSettings, False),
               ("thresholds", Thresholds, False)],
    SweepSpec: [("scheduler", Scheduler, False), ("resources", Resources, False), ("select", Selection, False)],
}
TITLES = {SiteSpec: "Site spec (`sites/<site>.yaml`)", SweepSpec: "Sweep spec (`tuning/<name>.yaml`)"}


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("'", "")


def _summary(cls: type) -> str:
    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split()).replace("``", "`")


def reference_markdown() -> str:
    """The whole reference, as Markdown."""
    lines = ["# Spec reference", "", "Generated from the dataclasses by `python -m pipeline.spec_reference` "
             "(a test keeps this file in sync). Every key not marked required may be left out.", ""]
    for spec in (SiteSpec, SweepSpec):
        lines += [f"## {TITLES[spec]}", "", "| key | type | default |", "|---|---|---|"]
        lines += [f"| `{key}` | {kind} | {default} |" for key, kind, default in TOP_LEVEL[spec]]
        lines.append("")
        for name, cls, required in SECTIONS[spec]:
            renames = RENAMES.get(cls, {})
            lines += [f"### `{name}:`{' (required)' if required else ''}", "", _summary(cls), "",
                      "| key | type | default |", "|---|---|---|"]
            for f in dataclasses.fields(cls):
                kind = str(f.type).replace("tuple[", "list of ").replace(", ...]", "").replace("|", "or")
                lines.append(f"| `{renames.get(f.name, f.name)}` | {kind} | {_default(f)} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
