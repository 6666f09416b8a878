"""What every site step (check, fine-tune, align) shares: its name, finding whether it already ran, the
prior it starts from, and the site's target data held to that prior's feature contract.

A step is a function ``step(spec, registry, ...)``, the same whether a test calls it or a Ray task does
(``pipeline.jobs.sites`` only fans steps out onto the cluster). Its result is a record named by everything
it depends on (:func:`step_name`), so finding out that it already ran costs a few store requests whatever
the registry holds: the record's id follows from its name (``Registry.find_run``), the site's latest
records from its aliases, the core prior from ``core``; nothing lists the registry.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from pipeline.data import Features
from pipeline.data.schema import FeatureSchema
from pipeline.data.split import split_indices
from pipeline.errors import DataError, RegistryError
from pipeline.method.precision import PRECISIONS
from pipeline.progress import Say
from pipeline.registry import CORE_ALIAS, Record, Registry
from pipeline.registry.registry import current_alias, settings_digest
from pipeline.sites.spec import SiteSpec
from pipeline.storage import validate_name

if TYPE_CHECKING:
    from pipeline.data.scan import FeatureScan
    from pipeline.method.prior import FlowPrior

STEP_INPUTS = {  # the spec sections each step's result depends on (with the prior and the data's fingerprints)
    "check": ("target", "finetune", "thresholds", "seed"),
    "finetune": ("target", "finetune", "seed"),
    "align": ("target", "observations", "encoder", "seed"),
}


def step_name(step: str, spec: SiteSpec, prior_id: str, fingerprints: list[str], **inputs: object) -> str:
    """The deterministic run name of a site step: ``<site>.<step>.<digest>`` of everything its result
    depends on (the spec sections of ``STEP_INPUTS``, the prior, the data's fingerprints, ``inputs``)."""
    sections = {k: v for k, v in spec.to_dict().items() if k in STEP_INPUTS[step]}
    whole = sections.get("finetune", {}).get("method") == "full" or inputs.get("mode") == "refit"
    if "finetune" in sections and whole:  # a whole prior: named as before adapters existed (no rerun)
        sections["finetune"] = {k: v for k, v in sections["finetune"].items() if k not in ("method", "rank")}
    if "encoder" in sections:  # an MLP autoencoder: named as before conv encoders existed (no rerun)
        sections["encoder"] = spec.encoder.to_dict()
    digest = settings_digest({"step": step, "spec": sections, "prior": prior_id, "data": fingerprints, **inputs})
    return f"{spec.site}.{step}.{digest}"


def default_step_name(step: str, spec: SiteSpec, prior_id: str, target: str, observations: str | None = None,
                      mode: str | None = None) -> str:
    """The run name of ``step`` as ``site run`` runs it (a fine-tune in ``mode`` at the first precision, the
    spec's alignment, no sweep) against ``prior_id``, from the data's fingerprints."""
    if step == "check":
        return step_name("check", spec, prior_id, [target])
    if step == "finetune":
        return step_name("finetune", spec, prior_id, [target], mode=mode, precision=PRECISIONS[0])
    return step_name("align", spec, prior_id, [observations, target], align=spec.alignment.to_dict(), sweep=None)


@dataclass(frozen=True)
class StepRun:
    """One run of a site step: the step's deterministic name (:func:`step_name`), the run name it registers
    under (the step's own, or ``<step>.<token>`` for a ``--force`` rerun), and the record when it already ran."""

    step: str
    name: str
    done: Record | None = None


def find_step(registry: Registry, kind: str, site: str, step: str, force: bool | str, say: Say) -> StepRun:
    """Whether the step ``step`` already ran, and if so with the registry made as a fresh run would leave it.

    Without ``force``: the site's current record of ``kind`` if it is a run of this step (the step's own, or a
    ``--force`` rerun of it), else the step's own run, found by its name. A constant number of store requests
    (the alias's latest entry, one or two records), however many records the registry holds. The site's alias
    (``<kind>.<site>``) is moved to the record unless it already points there: so rerunning a step heals a
    publish that died before its alias move, and, after ``registry alias set core <older>``, re-points the site
    to its records of the restored core without training. A record whose artifact is gone does not count (the
    step runs again, as a rerun). With ``force`` (True, or a token a caller drew once for all attempts of a
    task) the step runs again as ``<step>.<token>``: a retried task finds that run instead of training twice."""
    current = registry.alias(current_alias(kind, site))
    if force:
        token = secrets.token_hex(4) if force is True else validate_name(force, "forced run token")
        name = f"{step}.{token}"
        record = registry.find_run(kind, name)
    else:
        name = step
        record = recorded_run(registry, kind, step, current)
    if record is None:
        return StepRun(step, name)
    if artifact_gone(registry, record):
        say(f"[site {site}] {step} ran as {record.id} but its artifact is missing from the store; running it again")
        return StepRun(step, f"{step}.{secrets.token_hex(4)}")
    if current != record.id:
        registry.make_current(record)
    moved = f"; {current_alias(kind, site)} now points at it (was {current})" if current != record.id else ""
    say(f"[site {site}] {step} already ran: {record.id}{moved} (rerun it with --force)")
    return StepRun(step, name, record)


def recorded_run(registry: Registry, kind: str, step: str, current: str | None) -> Record | None:
    """The record of the step ``step`` (a :func:`step_name`) if it ran: the site's current record of ``kind``
    (``current``, the id its alias points at) if it is a run of this step (the step's own, or a ``--force``
    rerun of it), else the step's own run, found by its name. Reads only (``site validate`` asks this too)."""
    record = registry.get(current) if current else None
    if record is None or record.config.get("step") != step:
        record = registry.find_run(kind, step)
    return record


def artifact_gone(registry: Registry, record: Record) -> bool:
    """Whether ``record`` names an artifact the store no longer holds (its step would run again)."""
    return record.artifact is not None and not registry.store.exists(registry.artifact_key(record))


def ran(registry: Registry, kind: str, site: str, step: str) -> tuple[Record | None, str | None]:
    """The record of the step run ``step`` if it ran and its artifact is there, as :func:`find_step` finds it but
    moving nothing; and the id the site's alias of ``kind`` points at."""
    current = registry.alias(current_alias(kind, site))
    record = recorded_run(registry, kind, step, current)
    return (None if record is None or artifact_gone(registry, record) else record), current


def finished_path(spec: SiteSpec, registry: Registry, prior_id: str,
                  until: str = "align") -> tuple[Record, Record | None, Record | None] | None:
    """The records (check, site prior, encoder) of the site's path up to ``until`` (``check``, ``finetune`` or
    ``align``, as ``site run`` takes it against ``prior_id``) when every step of it already ran, is the site's
    current record of its kind and has its artifact: what a rerun of every step would find, found without
    running one (a few store requests a step; nothing moves). ``None`` when a step would run, or move an alias.
    The site prior is ``None`` where the check said reuse; the ones past ``until`` are ``None``."""
    target = spec.target.scan()

    def current(kind: str, name: str) -> Record | None:
        record, alias = ran(registry, kind, spec.site, name)
        return record if record is not None and record.id == alias else None

    check = current("site-check", default_step_name("check", spec, prior_id, target.fingerprint))
    if check is None:
        return None
    if until == "check":
        return check, None, None
    decision, site_prior = check.config["decision"], None
    if decision != "reuse":
        site_prior = current("site-prior", default_step_name("finetune", spec, prior_id, target.fingerprint,
                                                             mode=decision))
        if site_prior is None:
            return None
    if until == "finetune":
        return check, site_prior, None
    observations = spec.observations.scan()
    encoder = current("encoder", default_step_name("align", spec, site_prior.id if site_prior else prior_id,
                                                   target.fingerprint, observations.fingerprint))
    return None if encoder is None else (check, site_prior, encoder)


def core_id(registry: Registry, prior_id: str | None) -> str:
    """``prior_id``, else the fleet's current core prior (``core``); a ``RegistryError`` if there is none."""
    prior_id = prior_id or registry.alias(CORE_ALIAS)
    if prior_id is None:
        raise RegistryError(f"no core prior in the registry at {registry.store.uri}; fit one with "
                            "`flowprior prior fit` or name one with --prior")
    return prior_id


def contract_warnings(prior: "FlowPrior", features: Features, where: str) -> list[str]:
    """Hold a site's target ``features`` to the prior's feature contract (:mod:`pipeline.data.schema`):
    a ``DataError`` naming the first column that differs by name or position; warnings (returned) for
    columns whose statistics look like other units. A prior fitted before contracts is checked by its
    column count only, with a warning saying so."""
    if "features" not in prior.info:
        if features.dim != prior.feature_dim:
            raise DataError(f"{where} has {features.dim} feature columns ({', '.join(features.columns[:4])}...) but "
                            f"the prior expects {prior.feature_dim}")
        return [f"the prior has no feature schema (fitted before feature contracts): only the number of columns "
                f"({prior.feature_dim}) was checked, not their names, order or units"]
    schema = FeatureSchema.from_dict(prior.info["features"])
    schema.require_columns(features.columns, where)
    return schema.drift(FeatureSchema.measure(features.columns, features.dtypes, features.values))


@dataclass(frozen=True)
class SitePoints:
    """A site's target features held to a prior's feature contract, their train/held-out split, and the
    contract's warnings."""

    features: Features
    train: object  # row indices (numpy)
    heldout: object
    warnings: list[str]


def site_points(spec: SiteSpec, prior: "FlowPrior", say: Say | None = None,
                scan: "FeatureScan | None" = None) -> SitePoints:
    """Read the site's target (from ``scan`` if the step already scanned it), hold it to ``prior``'s feature
    contract (each warning is said) and split it by the spec's rule."""
    features = spec.target.read(scan)
    warnings = contract_warnings(prior, features, f"{spec.path}: target {spec.target.uri}")
    for warning in warnings if say is not None else ():
        say(f"[site {spec.site}] warning: {warning}")
    train, heldout = split_indices(features.values, spec.finetune.heldout_fraction, spec.seed)
    return SitePoints(features, train, heldout, warnings)


@contextmanager
def naming_the_site(spec: SiteSpec) -> Iterator[None]:
    """A ``DataError`` raised inside, prefixed with the site and its spec (the method library knows neither)."""
    try:
        yield
    except DataError as error:
        raise DataError(f"site {spec.site} ({spec.path}): {error}") from None
