"""``site validate``: everything about a site spec that can be known without reading its data or training.

    report = validate_site(spec, registry, prior_id=None)   # report.problems, .warnings, .plan

It reads the Parquet footers of the spec's two tables (and, where the spec filters rows, only the
filter columns, to count the rows that pass), the prior's registry record (its feature contract, see
:mod:`pipeline.data.schema`) and the site's records, and says what each site step would do. It writes
nothing. Per-column statistics (units) need the data and are left to ``site check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data.features import FeatureScan, column_names
from pipeline.data.schema import FeatureSchema
from pipeline.errors import DataError, RegistryError, StoreError
from pipeline.registry import CORE_ALIAS, Registry
from pipeline.sites.decision import MIN_CHECK_POINTS
from pipeline.sites.spec import DataSource, SiteSpec


@dataclass
class SiteValidation:
    """What ``validate_site`` found: ``problems`` (the step would fail), ``warnings``, and the ``plan``."""

    site: str
    path: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

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


def validate_site(spec: SiteSpec, registry: Registry, prior_id: str | None = None) -> SiteValidation:
    """See the module docstring."""
    report = SiteValidation(spec.site, spec.path)
    target = _table(spec, "target", spec.target, report)
    observations = _table(spec, "observations", spec.observations, report)
    try:
        prior_id = prior_id or registry.alias(CORE_ALIAS)
        if prior_id is None:
            report.problems.append(f"no core prior in the registry at {registry.store.uri}; fit one with "
                                   "`flowprior prior fit` or name one with --prior")
        elif target is not None:
            _contract(spec, target[0], registry, prior_id, report)
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
    t, a = spec.thresholds, spec.alignment
    dropped = " (before dropping rows with NaN/inf)" if spec.target.drop_nonfinite else ""
    report.plan += [
        f"check: {rows:,} target rows{dropped}, ~{heldout:,} held out; a {settings.probe_steps}-step probe fine-tune "
        f"of {prior_id}; finetune if it gains > {t.finetune_gain:.0%}, refit if fm_ratio > {t.refit_fm:g}",
        f"finetune (if the check says so): {settings.steps} steps from {prior_id}'s weights at lr {settings.lr:g}, "
        f"or a refit of {settings.refit_steps} steps",
        f"align: {observations[1]:,} observations, {a.mode} at lambda {a.lam:g}, {a.steps} steps (and a lambda = 0 "
        f"baseline), encoder widths {list(spec.encoder.widths)}"]
    return report
