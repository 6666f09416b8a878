"""Per-site jobs: check against the core prior, fine-tune or refit a site prior, align the encoder.

    check_site(spec, registry)                      # in the caller's process: reads, measures, records
    run_sites(finetune_site, specs, store)          # one Ray task per site, in parallel
    run_sites(align_site, specs, store, lam=0.002, gpu=0.25)   # four sites share each GPU

Each job is an ordinary function over the method library and the registry; ``run_sites`` runs it
as Ray tasks (1 CPU, 1 torch thread each, and a GPU share if asked: the task then trains on its
GPU) so many sites train at once on a cluster and two at a time on a 2-core laptop. Every result is
registered by the task that produced it (the registry takes many writers), so a site that fails does
not lose the others' work.
"""

from __future__ import annotations

import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from pipeline.data import Features
from pipeline.data.schema import FeatureSchema
from pipeline.data.split import split_indices
from pipeline.errors import DataError, RegistryError, SpecError
from pipeline.method.encoder import EncoderRun, save_encoder, train_encoder
from pipeline.method.metrics import heldout_fm, knn_nll
from pipeline.method.prior import FlowPrior
from pipeline.progress import Progress
from pipeline.registry import CORE_ALIAS, Record, Registry
from pipeline.registry.registry import current_alias, settings_digest
from pipeline.sites.decision import MIN_CHECK_POINTS, decide, measure, probe
from pipeline.sites.site_prior import site_fit_config, train_site_prior
from pipeline.sites.spec import SiteSpec
from pipeline.storage import Store, validate_name
from pipeline.tracking import Tracking

Say = Callable[[str], None]
SITE_RETRIES = 3  # reruns of a site task whose worker died (a lost node, an OOM kill)
METRIC_POINTS = 5000  # target points the encoder metrics (kNN NLL proxy, spread) compare latents with


STEP_INPUTS = {  # the spec sections each step's result depends on (with the prior and the data's fingerprints)
    "check": ("target", "finetune", "thresholds", "seed"),
    "finetune": ("target", "finetune", "seed"),
    "align": ("target", "observations", "encoder", "seed"),
}


def step_name(step: str, spec: SiteSpec, prior_id: str, fingerprints: list[str], **inputs: object) -> str:
    """The deterministic run name of a site step: ``<site>.<step>.<digest>`` of everything its result
    depends on (the spec sections of ``STEP_INPUTS``, the prior, the data's fingerprints, ``inputs``)."""
    sections = {k: v for k, v in spec.to_dict().items() if k in STEP_INPUTS[step]}
    digest = settings_digest({"step": step, "spec": sections, "prior": prior_id, "data": fingerprints, **inputs})
    return f"{spec.site}.{step}.{digest}"


@dataclass(frozen=True)
class StepRun:
    """One run of a site step: the step's deterministic name (:func:`step_name`), the run name it registers
    under (the step's own, or ``<step>.<token>`` for a ``--force`` rerun), and the record when it already ran."""

    step: str
    name: str
    done: Record | None = None


def find_step(registry: Registry, kind: str, site: str, step: str, force: bool | str, say: Say) -> StepRun:
    """Whether the step ``step`` already ran, and if so with the registry made as a fresh run would leave it.

    Without ``force``: the newest record of the step (its run, or a ``--force`` rerun of it). Its site's alias
    (``<kind>.<site>``) is moved to it unless it already points there: so rerunning a step heals a publish
    that died before its alias move, and, after ``registry alias set core <older>``, re-points the site to
    its records of the restored core without training. A record whose artifact is gone does not count (the
    step runs again, as a rerun). With ``force`` (True, or a token a caller drew once for all attempts of a
    task) the step runs again as ``<step>.<token>``: a retried task finds that run instead of training twice."""
    if force:
        token = secrets.token_hex(4) if force is True else validate_name(force, "forced run token")
        name = f"{step}.{token}"
        runs = [r for r in [registry.find_run(kind, name)] if r is not None]
    else:
        name = step
        runs = [r for r in registry.records(kind=kind, site=site) if step in (r.name, r.config.get("step"))]
    if not runs:
        return StepRun(step, name)
    record = runs[-1]
    if record.artifact is not None and not registry.store.exists(registry.artifact_key(record)):
        say(f"[site {site}] {step} ran as {record.id} but its artifact is missing from the store; running it again")
        return StepRun(step, f"{step}.{secrets.token_hex(4)}")
    before = registry.alias(current_alias(kind, site))
    registry.make_current(record)
    moved = f"; {current_alias(kind, site)} now points at it (was {before})" if before != record.id else ""
    say(f"[site {site}] {step} already ran: {record.id}{moved} (rerun it with --force)")
    return StepRun(step, name, record)


def _core_id(registry: Registry, prior_id: str | None) -> str:
    prior_id = prior_id or registry.alias(CORE_ALIAS)
    if prior_id is None:
        raise RegistryError(f"no core prior in the registry at {registry.store.uri}; fit one with "
                            "`flowprior prior fit` or name one with --prior")
    return prior_id


def contract_warnings(prior: FlowPrior, features: Features, where: str) -> list[str]:
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


def _site_points(spec: SiteSpec, prior: FlowPrior, say: Say | None = None):
    """The site's target features (held to the prior's feature contract; each warning is said) and its
    train/held-out split, and the contract's warnings."""
    features = spec.target.read()
    warnings = contract_warnings(prior, features, f"{spec.path}: target {spec.target.uri}")
    for warning in warnings if say is not None else ():
        say(f"[site {spec.site}] warning: {warning}")
    train, heldout = split_indices(features.values, spec.finetune.heldout_fraction, spec.seed)
    return features, train, heldout, warnings


@contextmanager
def naming_the_site(spec: SiteSpec) -> Iterator[None]:
    """A ``DataError`` raised inside, prefixed with the site and its spec (the method library knows neither)."""
    try:
        yield
    except DataError as error:
        raise DataError(f"site {spec.site} ({spec.path}): {error}") from None


def check_site(spec: SiteSpec, registry: Registry, prior_id: str | None = None, say: Say = print,
               force: bool | str = False, tags: dict[str, str] | None = None) -> Record:
    """Measure how well the prior (default: the current core) explains the site's held-out target
    features, decide reuse / finetune / refit, and record it as a ``site-check``. A step with the same
    inputs that already ran returns its record, unless ``force`` (see :func:`step_name`)."""
    prior_id = _core_id(registry, prior_id)
    record = registry.get(prior_id)
    missing = [k for k in ("heldout_fm", "heldout_nll_proxy", "nll_samples") if record.metrics.get(k) is None]
    if missing:
        raise RegistryError(f"prior {prior_id} has no {', '.join(missing)} in its metrics (fitted before site "
                            "checks existed); refit it with `flowprior prior fit`")
    run = find_step(registry, "site-check", spec.site, step_name("check", spec, prior_id, [target_fingerprint(spec)]),
                    force, say)
    if run.done:
        return run.done
    prior = registry.load_prior(prior_id)
    features, train, heldout, warnings = _site_points(spec, prior, say)
    if len(heldout) < MIN_CHECK_POINTS:
        raise DataError(f"{spec.path}: target {spec.target.uri} has {len(features.values)} rows, so "
                        f"{len(heldout)} held out (finetune.heldout_fraction {spec.finetune.heldout_fraction:g}); a "
                        f"check needs at least {MIN_CHECK_POINTS} held-out points to decide anything")
    z = prior.to_prior(features.values[heldout])  # (m, d1)
    numbers = measure(prior, z, record.metrics["heldout_fm"], record.metrics["heldout_nll_proxy"],
                      int(record.metrics["nll_samples"]), seed=spec.seed)
    settings = spec.finetune
    with naming_the_site(spec):  # a number that is not finite (a diverging probe) decides nothing
        numbers |= probe(prior, prior.to_prior(features.values[train]), z, settings.probe_steps, settings.lr,
                         settings.batch_size, seed=spec.seed)
        decision = decide(numbers, spec.thresholds)
    check = registry.register("site-check", site=spec.site, parents=[prior_id], fingerprint=features.fingerprint,
                              name=run.name, tags=tags,
                              config={"decision": decision, "thresholds": spec.thresholds.to_dict(), "step": run.step,
                                      "spec": spec.path, "target": spec.target.uri, "contract_warnings": warnings},
                              metrics={**numbers, "rows_dropped": features.rows_dropped})
    t = spec.thresholds
    say(f"[site {spec.site} check] {decision}: a {settings.probe_steps}-step probe fine-tune gains "
        f"{numbers['probe_gain']:.1%} held-out FM (> {t.finetune_gain:.0%} finetunes), fm_ratio "
        f"{numbers['fm_ratio']:.3f} (> {t.refit_fm:g} refits), nll_gap {numbers['nll_gap']:+.3f} nats, "
        f"mmd {numbers['mmd']:.4f}; recorded {check.id}")
    return check


def target_fingerprint(spec: SiteSpec) -> str:
    """The fingerprint of the site's target data as its spec reads it (what a check records it measured)."""
    return spec.target.scan().fingerprint


def checks_against(registry: Registry, site: str, prior_id: str) -> list[Record]:
    """The site's checks against ``prior_id``, oldest first."""
    return [r for r in registry.records(kind="site-check", site=site) if prior_id in r.parents]


def latest_check(registry: Registry, site: str, prior_id: str, fingerprint: str) -> Record | None:
    """The site's newest check against ``prior_id`` of the target data with ``fingerprint`` (a check of other
    data says nothing about these)."""
    checks = [r for r in checks_against(registry, site, prior_id) if r.fingerprint == fingerprint]
    return checks[-1] if checks else None


def finetune_site(spec: SiteSpec, store: Store, mode: str = "auto", prior_id: str | None = None,
                  say: Say = print, device: str = "cpu", precision: str = "fp32", force: bool | str = False,
                  tags: dict[str, str] | None = None) -> Record | None:
    """Train and register a ``site-prior`` (parent: the core prior) on ``device``, the flow-matching
    forward in ``precision``. ``mode`` ``auto`` follows the site's latest check against that prior
    (checking first if there is none) and does nothing on ``reuse``. A fine-tune with the same inputs
    that already ran returns its record, unless ``force``."""
    registry = Registry(store)
    prior_id = _core_id(registry, prior_id)
    fingerprint = target_fingerprint(spec)
    if mode == "auto":
        check = latest_check(registry, spec.site, prior_id, fingerprint) or check_site(spec, registry, prior_id, say,
                                                                                     tags=tags)
        mode = check.config["decision"]
        if mode == "reuse":
            say(f"[site {spec.site}] decision reuse ({check.id}): the core prior serves this site, nothing to train")
            return None
    run = find_step(registry, "site-prior", spec.site,
                    step_name("finetune", spec, prior_id, [fingerprint], mode=mode, precision=precision), force, say)
    if run.done:
        return run.done
    core = registry.load_prior(prior_id).to(device)
    features, train, heldout, warnings = _site_points(spec, core, say)
    z_train, z_heldout = core.to_prior(features.values[train]), core.to_prior(features.values[heldout])
    settings = spec.finetune
    steps = settings.steps if mode == "finetune" else settings.refit_steps
    fit = site_fit_config(core, mode, steps, settings.lr, settings.batch_size, settings.log_every, precision)
    say(f"[site {spec.site} {mode}] {len(z_train)} training / {len(z_heldout)} held-out rows, {steps} steps "
        f"from {'the weights of ' if mode == 'finetune' else 'scratch in the space of '}{prior_id} on {device}")
    bar = Progress(f"site {spec.site} {mode}", steps, "steps", say)
    progress = lambda h: bar.update(h["step"], f"train_fm {h['train_fm']:.4f}  heldout_fm {h['heldout_fm']:.4f}")  # noqa: E731
    with naming_the_site(spec):  # a diverged training registers nothing
        site_prior = train_site_prior(core, z_train, z_heldout, mode, fit, seed=spec.seed, progress=progress)
    reuse_fm = heldout_fm(core.velocity, z_heldout, spec.seed)
    final = site_prior.info["history"][-1]
    record = registry.publish_prior(
        site_prior, kind="site-prior", site=spec.site, parents=[prior_id], fingerprint=features.fingerprint,
        name=run.name, tags=tags,
        config={"step": run.step, "mode": mode, "fit": fit.to_dict(), "spec": spec.path, "target": spec.target.uri,
                "contract_warnings": warnings, "history": site_prior.info["history"]},
        metrics={"heldout_fm": final["heldout_fm"], "heldout_fm_core": reuse_fm, "steps": steps,
                 "train_rows": len(z_train), "heldout_rows": len(z_heldout)})
    say(f"[site {spec.site} {mode}] held-out FM {reuse_fm:.4f} (core) -> {final['heldout_fm']:.4f}; "
        f"registered {record.id}")
    return record


def alignment_prior(registry: Registry, site: str, fingerprint: str, prior_id: str | None = None) -> str:
    """The prior a site's encoder aligns to (``prior_id`` if given): its site prior derived from the current
    core prior if it has one, else the core prior when the site's check of its current target data (with
    ``fingerprint``) said ``reuse``, or when the site was never checked against that core."""
    if prior_id:
        return prior_id
    core = _core_id(registry, None)
    site_prior = registry.alias(current_alias("site-prior", site))
    if site_prior and core in registry.get(site_prior).parents:
        return site_prior
    checks = checks_against(registry, site, core)
    current = [c for c in checks if c.fingerprint == fingerprint]
    if checks and not current:
        raise RegistryError(f"site {site}: its checks against the core prior {core} measured other target data "
                            f"(newest: {checks[-1].id}); run `flowprior site check` on the current data first "
                            "(or pass --prior)")
    if current and current[-1].config["decision"] != "reuse":
        check = current[-1]
        raise RegistryError(f"site {site}: its check {check.id} decided {check.config['decision']} but it has no "
                            f"site prior from the core prior {core}; run `flowprior site finetune` first "
                            "(or pass --prior)")
    return core


def alignment_data(spec: SiteSpec, prior: FlowPrior, say: Say | None = None):
    """The site's observations, up to ``METRIC_POINTS`` target points in prior space (what the encoder
    metrics compare latents with), and the kNN NLL proxy of other target points against those: the
    value latents distributed exactly like the target would score. The target is held to the prior's
    feature contract (warnings are said with ``say``)."""
    if spec.encoder.latent_dim is not None and spec.encoder.latent_dim != prior.latent_dim:
        raise SpecError(f"{spec.path}: encoder.latent_dim is {spec.encoder.latent_dim} but the prior it aligns to "
                         f"has dimension {prior.latent_dim}")
    observations = spec.observations.read()
    target, _, _, _ = _site_points(spec, prior, say)
    rows = torch.randperm(len(target.values), generator=torch.Generator().manual_seed(spec.seed))
    z = prior.to_prior(target.values[rows[: METRIC_POINTS + 1000].numpy()])  # (<= 6000, d1)
    z_target, z_other = z[:METRIC_POINTS], z[METRIC_POINTS:]
    reference = knn_nll(z_other, z_target).mean().item() if len(z_other) >= 100 else None
    return observations, z_target, reference


def sweep_choice(registry: Registry, sweep_id: str, site: str) -> dict:
    """The setting a recorded sweep chose for ``site`` (lam, lr, draws, steps, prior, trial, ...)."""
    record = registry.get(sweep_id)
    if record.kind != "sweep":
        raise RegistryError(f"record {sweep_id} is a {record.kind}, not a sweep")
    choices = record.config["choices"]
    if site not in choices:
        raise RegistryError(f"sweep {sweep_id} did not sweep site {site} (it swept {', '.join(sorted(choices))})")
    return choices[site]


@dataclass
class Alignment:
    """An aligned encoder's record, and both runs (aligned and the lambda = 0 baseline) for reports
    (None when the step had already run and nothing was trained)."""

    record: Record
    aligned: EncoderRun | None
    baseline: EncoderRun | None


def align_site(spec: SiteSpec, store: Store, lam: float | None = None, prior_id: str | None = None,
               sweep_id: str | None = None, say: Say = print, device: str = "cpu", force: bool | str = False,
               tags: dict[str, str] | None = None) -> Alignment:
    """Train the site's autoencoder with ``recon + lambda L_align`` against its prior, and a lambda = 0
    baseline in the same run; register the aligned encoder (``aligned_to`` the prior) with both runs' metrics.

    With ``sweep_id`` the settings (lambda, lr, draws, steps) and the prior are the ones that sweep chose
    for the site, and the sweep becomes a parent of the encoder. Both runs train on ``device``. An alignment
    with the same inputs that already ran returns its record (and no runs), unless ``force``."""
    registry = Registry(store)
    config = spec.alignment if lam is None else replace(spec.alignment, lam=lam)
    if sweep_id is not None:
        if lam is not None or prior_id is not None:
            raise SpecError("--from-sweep sets lambda and the prior; do not also pass --lambda or --prior")
        choice = sweep_choice(registry, sweep_id, spec.site)
        config = replace(config, **{k: choice[k] for k in ("lam", "lr", "draws", "steps")},
                         mode=choice.get("mode", "align"))  # sweeps recorded before modes used L_align
        prior_id = choice["prior"]
        try:
            current = alignment_prior(registry, spec.site, target_fingerprint(spec))
        except RegistryError:
            current = None
        if current not in (None, prior_id):
            say(f"[site {spec.site} align] note: sweep {sweep_id} ran against {prior_id}, but the site's prior is "
                f"now {current}; the encoder will be aligned to the sweep's (run a new sweep to follow the new one)")
    fingerprint = target_fingerprint(spec)
    prior_id = alignment_prior(registry, spec.site, fingerprint, prior_id)
    run = find_step(registry, "encoder", spec.site,
                    step_name("align", spec, prior_id, [spec.observations.scan().fingerprint, fingerprint],
                              align=config.to_dict(), sweep=sweep_id), force, say)
    if run.done:
        return Alignment(run.done, None, None)
    prior = registry.load_prior(prior_id)
    observations, z_target, reference = alignment_data(spec, prior, say)
    runs = {}
    for name, run_config in (("aligned", config), ("baseline", replace(config, lam=0.0))):
        say(f"[site {spec.site} align] {name}: lambda {run_config.lam:g}, {len(observations.values)} observations, "
            f"{run_config.steps} steps, prior {prior_id}, on {device}")
        bar = Progress(f"site {spec.site} align {name}", run_config.steps, "steps", say)

        def progress(h: dict, bar: Progress = bar, every: int = 5 * run_config.log_every,
                     last: int = run_config.steps) -> None:
            if h["step"] % every == 0 or h["step"] == last:
                bar.update(h["step"], f"recon {h['recon']:.4f}  l_align {h['l_align']:.3f}  "
                                      f"knn_nll {h['knn_nll']:.3f}  spread {h['spread']:.2f}")

        runs[name] = train_encoder(observations.values, prior, run_config, z_target, spec.encoder.widths,
                                   seed=spec.seed, progress=progress, device=device)
    aligned, baseline = runs["aligned"], runs["baseline"]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_encoder(aligned.model, Path(tmp) / "encoder.safetensors",
                            {"site": spec.site, "lambda": config.lam, "prior": prior_id})
        record = registry.register(
            "encoder", site=spec.site, parents=[prior_id, *([sweep_id] if sweep_id else [])], aligned_to=prior_id,
            artifact=path, fingerprint=observations.fingerprint, name=run.name, tags=tags,
            config={"step": run.step, "lambda": config.lam, "align": config.to_dict(),
                    "encoder": aligned.model.config.to_dict(),
                    "sweep": sweep_id,
                    "spec": spec.path, "observations": spec.observations.uri,
                    "history": aligned.history, "baseline_history": baseline.history},
            metrics={**aligned.metrics, **{f"baseline_{k}": v for k, v in baseline.metrics.items()},
                     "target_knn_nll": reference, "observations": len(observations.values),
                     "rows_dropped": observations.rows_dropped})
    say(f"[site {spec.site} align] registered {record.id}: recon {aligned.metrics['recon']:.4f} "
        f"(lambda 0: {baseline.metrics['recon']:.4f}), knn_nll {aligned.metrics['knn_nll']:.3f} "
        f"(lambda 0: {baseline.metrics['knn_nll']:.3f}), aligned to {prior_id}")
    return Alignment(record, aligned, baseline)


def site_task_resources(gpu: float = 0.0) -> dict[str, float]:
    """What one site task asks Ray for: 1 CPU (its one torch thread), and ``gpu`` of a GPU if asked."""
    return {"CPU": 1.0, **({"GPU": gpu} if gpu else {})}


def _in_task(job: Callable, spec: SiteSpec, store: Store, kwargs: dict):
    torch.set_num_threads(1)  # one CPU per task: threads beyond it only fight the other sites' tasks
    return job(spec, store, **kwargs)


def run_sites(job: Callable, specs: list[SiteSpec], store: Store, address: str | None = None,
              say: Say = print, gpu: float = 0.0, retries: int = SITE_RETRIES, **kwargs: object) -> list:
    """``job(spec, store, device=..., **kwargs)`` for every site as parallel Ray tasks; results in
    ``specs`` order. Each task asks for 1 CPU and ``gpu`` GPUs (a share such as 0.25 packs four sites
    on a GPU) and trains on ``cuda`` when it has one. On the embedded local Ray without GPUs a GPU
    request falls back to CPUs (with a note); a cluster's autoscaler may add GPU nodes.

    A task whose worker dies (a lost spot node, an OOM kill) runs again, up to ``retries`` times; the
    site steps are idempotent (:func:`step_name`), so a rerun after a registration registers nothing
    new. An exception the job raises (bad data, a bad spec) is not retried.

    Every site runs to its end; if any failed, the first failure is raised after the rest finished
    (their results are already registered)."""
    import ray

    from pipeline.jobs import runtime

    if not 0 <= gpu <= 1:
        raise SpecError(f"gpu is a share of one GPU per site task, in [0, 1]; got {gpu!r}")
    if runtime.connect(address) and gpu and runtime.available("GPU") < gpu:
        say(f"[sites] asked for {gpu:g} GPU per site but this local Ray has no GPU: running on CPUs")
        gpu = 0.0
    kwargs["device"] = "cuda" if gpu else "cpu"
    if kwargs.get("force") is True:  # one token for every attempt: a retried forced task finds its own run
        kwargs["force"] = secrets.token_hex(4)
    shape = site_task_resources(gpu)
    if retries < 0:
        raise SpecError(f"retries must be >= 0, got {retries!r}")
    tracking = Tracking.from_env()  # each task copies its records to MLflow: it needs to know where
    task = ray.remote(num_cpus=shape["CPU"], num_gpus=shape.get("GPU", 0), max_retries=retries,
                      retry_exceptions=False, **({"runtime_env": {"env_vars": tracking.env()}} if tracking else {})
                      )(_in_task)
    refs = {task.remote(job, spec, store, kwargs): spec.site for spec in specs}
    results, errors, pending = {}, [], list(refs)
    bar = Progress(f"sites {getattr(job, '__name__', 'job').removesuffix('_site')}", len(refs), "sites", say)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            results[refs[done[0]]] = ray.get(done[0])
            bar.update(len(results) + len(errors), f"{refs[done[0]]} done")
        except Exception as error:  # noqa: BLE001 - the job raised, its worker crashed or was OOM-killed, its
            # node was lost: that site failed, and every other site runs on
            if isinstance(error, ray.exceptions.RayTaskError):
                error = error.as_instanceof_cause()
            errors.append((refs[done[0]], error))
            say(f"[site {refs[done[0]]}] failed: {type(error).__name__}: {error}")
            bar.update(len(results) + len(errors), f"{refs[done[0]]} failed")
    if errors:
        raise errors[0][1]
    return [results[spec.site] for spec in specs]
