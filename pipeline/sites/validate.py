"""``site validate``: everything about a site spec that can be known without reading its data or training.

    report = validate_site(spec, registry, prior_id=None)   # report.problems, .warnings, .plan

It reads the Parquet footers of the spec's two tables (and, where the spec filters rows, only the
filter columns, to count the rows that pass), the prior's registry record (its feature contract, see
:mod:`pipeline.data.schema`), the header of the checkpoint of the prior the site's encoder would align
to (its latent dimension, held to the spec's ``encoder.latent_dim``) and the site's records, and says
what each site step would do, or which record shows it already ran. It writes nothing. Per-column
statistics (units) need the data and are left to ``site check``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

from pipeline.data.scan import FeatureScan, column_names
from pipeline.data.schema import FeatureSchema
from pipeline.errors import DataError, RegistryError, StoreError
from pipeline.registry import CORE_ALIAS, Record, Registry
from pipeline.sites.decision import MIN_CHECK_POINTS
from pipeline.sites.spec import DataSource, SiteSpec
from pipeline.sites.steps import default_step_name, ran


@dataclass
class SiteValidation:
    """What ``validate_site`` found: ``problems`` (the step would fail), ``warnings``, the ``plan`` (what the
    steps that would run would do), ``done`` (the steps whose record shows they already ran) and ``skipped``
    (the steps that will not run, and why)."""

    site: str
    path: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)  # the steps that would run
    done: list[dict] = field(default_factory=list)  # {"step", "record", "what"}: steps that already ran
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _table(spec: SiteSpec, name: str, source: DataSource, report: SiteValidation) -> tuple[FeatureScan, int] | None:
    """The table's scan and the number of rows passing its filters, or None (with the problem noted)."""
    where = f"{name} {source.uri}"
    try:
        scan = source.scan()
    except DataError as error:
        report.problems.append(f"{name}: {error}")
        return None
    first = scan.files[0].display
    missing = [c for c, t in zip(scan.read_columns, scan.read_dtypes, strict=True) if t == "missing"]
    if missing:
        report.problems.append(f"{name}: feature column {missing[0]!r} is not in {first}")
        return None
    text = [c for c, t in zip(scan.read_columns, scan.read_dtypes, strict=True) if not scan.list_column
            and not any(k in t for k in ("int", "float", "double", "halffloat"))]
    if text:
        report.problems.append(f"{name}: feature column {text[0]!r} of {first} is not numeric")
        return None
    try:
        rows = scan.count_rows()
    except DataError as error:
        report.problems.append(f"{name}: {error}")
        return None
    if rows == 0:
        report.problems.append(f"{where}: no rows pass the filters {source.filters} ({len(scan.files)} files)")
    return scan, rows


def _contract(spec: SiteSpec, scan: FeatureScan, registry: Registry, prior_id: str, report: SiteValidation) -> None:
    record = registry.get(prior_id)
    if record.kind not in ("prior", "site-prior"):
        report.problems.append(f"record {prior_id} is a {record.kind}, not a prior")
        return
    if "features" not in record.config:
        report.warnings.append(f"prior {prior_id} has no feature schema (fitted before feature contracts): "
                               "`site check` compares the number of columns only")
        return
    schema = FeatureSchema.from_dict(record.config["features"])
    columns = column_names(scan, schema.dim) if scan.list_column else list(scan.read_columns)
    try:
        schema.require_columns(columns, f"target {spec.target.uri}")
    except DataError as error:
        report.problems.append(str(error))


def prior_latent_dim(registry: Registry, record: Record) -> int | None:
    """The latent dimension of a prior record's checkpoint, read from its safetensors header (JSON; no tensor
    is loaded), or None if the header does not say."""
    data = registry.store.read(registry.artifact_key(record))
    try:
        (size,) = struct.unpack("<Q", data[:8])
        config = json.loads(json.loads(data[8:8 + size])["__metadata__"]["config"])
        return int(config["velocity"]["dim"])
    except (struct.error, ValueError, KeyError, TypeError):
        return None


def _latent_dim(spec: SiteSpec, registry: Registry, prior_id: str, report: SiteValidation) -> None:
    """Hold ``encoder.latent_dim``, where the spec sets it, to the dimension of the prior the encoder aligns to."""
    record = registry.get(prior_id)
    if spec.encoder.latent_dim is None or record.artifact is None:
        return
    try:
        dim = prior_latent_dim(registry, record)
    except FileNotFoundError:
        report.problems.append(f"prior {prior_id}: its artifact {registry.artifact_uri(record)} is missing")
        return
    if dim is not None and dim != spec.encoder.latent_dim:
        report.problems.append(f"{spec.path}: encoder.latent_dim is {spec.encoder.latent_dim} but the prior the "
                               f"site's encoder aligns to ({prior_id}) has dimension {dim}; leave latent_dim out "
                               "to take the prior's")


def _alignment_prior(registry: Registry, site: str, fingerprint: str, prior_id: str | None, core: str) -> str:
    """The prior ``site align`` would align to now; where that needs a check or fine-tune first (which keep the
    core's space), the core prior."""
    from pipeline.sites.align import alignment_prior

    try:
        return alignment_prior(registry, site, fingerprint, prior_id)
    except RegistryError:
        return prior_id or core


def _plan(spec: SiteSpec, registry: Registry, prior_id: str, prior_arg: str | None,
          target: tuple[FeatureScan, int], observations: tuple[FeatureScan, int], report: SiteValidation) -> None:
    """What each step would do, or the record that shows it already ran (found by the step's run name)."""
    (target, target_rows), (observations, observation_rows) = target, observations
    settings, t, a = spec.finetune, spec.thresholds, spec.alignment
    heldout = int(target_rows * settings.heldout_fraction)
    dropped = " (before dropping rows with NaN/inf)" if spec.target.drop_nonfinite else ""

    def step(name: str, kind: str, run: str | None, what: str) -> Record | None:
        record = ran(registry, kind, spec.site, run)[0] if run else None
        if record is None:
            report.plan.append(what)
        else:
            report.done.append({"step": name, "record": record.id, "what": what})
        return record

    check = step("check", "site-check", default_step_name("check", spec, prior_id, target.fingerprint),
                 f"check: {target_rows:,} target rows{dropped}, ~{heldout:,} held out; a {settings.probe_steps}-step "
                 f"probe fine-tune of {prior_id}; finetune if it gains > {t.finetune_gain:.0%}, refit if fm_ratio > "
                 f"{t.refit_fm:g}")
    decision = check.config.get("decision") if check else None
    finetune = (f"finetune: {settings.steps} steps from {prior_id}'s weights at lr {settings.lr:g}" if decision ==
                "finetune" else f"refit: {settings.refit_steps} steps" if decision == "refit" else
                f"finetune (if the check says so): {settings.steps} steps from {prior_id}'s weights at lr "
                f"{settings.lr:g}, or a refit of {settings.refit_steps} steps")
    if decision == "reuse":
        report.skipped.append(f"finetune: the check {check.id} decided reuse (the core prior serves the site)")
    else:
        step("finetune", "site-prior", default_step_name("finetune", spec, prior_id, target.fingerprint, mode=decision)
             if decision else None, finetune)
    aligned_to = _alignment_prior(registry, spec.site, target.fingerprint, prior_arg, prior_id)
    step("align", "encoder", default_step_name("align", spec, aligned_to, target.fingerprint, observations.fingerprint),
         f"align: {observation_rows:,} observations, {a.mode} at lambda {a.lam:g}, {a.steps} steps (and a lambda = 0 "
         f"baseline), {spec.encoder.kind} encoder {list(spec.encoder.widths)}, to {aligned_to}")


def validate_site(spec: SiteSpec, registry: Registry, prior_id: str | None = None) -> SiteValidation:
    """See the module docstring."""
    report = SiteValidation(spec.site, spec.path)
    target = _table(spec, "target", spec.target, report)
    observations = _table(spec, "observations", spec.observations, report)
    shape = observations[0].shape if observations else None  # a tensor column's, known from the footer
    if shape and (problem := spec.image_mismatch(math.prod(shape), shape)):
        report.problems.append(problem)
    prior_arg = prior_id
    try:
        prior_id = prior_id or registry.alias(CORE_ALIAS)
        if prior_id is None:
            report.problems.append(f"no core prior in the registry at {registry.store.uri}; fit one with "
                                   "`flowprior prior fit` or name one with --prior")
        elif target is not None:
            _contract(spec, target[0], registry, prior_id, report)
            _latent_dim(spec, registry, _alignment_prior(registry, spec.site, target[0].fingerprint, prior_arg,
                                                         prior_id), report)
    except (RegistryError, StoreError) as error:
        report.problems.append(str(error))
    if target is None or observations is None or prior_id is None or report.problems:
        return report
    rows, settings = target[1], spec.finetune
    heldout = int(rows * settings.heldout_fraction)
    if heldout < MIN_CHECK_POINTS:
        report.problems.append(f"target {spec.target.uri}: {rows} rows, so ~{heldout} held out; a check needs at "
                               f"least {MIN_CHECK_POINTS} (finetune.heldout_fraction {settings.heldout_fraction:g})")
        return report
    try:
        _plan(spec, registry, prior_id, prior_arg, target, observations, report)
    except (RegistryError, StoreError) as error:
        report.problems.append(str(error))
    return report
