"""The alignment step: train a site's autoencoder with ``recon + lambda L_align`` against its prior (and a
lambda = 0 baseline in the same run), and register the encoder ``aligned_to`` that prior."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from pipeline.errors import RegistryError, SpecError
from pipeline.method.encoder import EncoderRun, train_encoder
from pipeline.method.metrics import knn_nll
from pipeline.method.prior import FlowPrior
from pipeline.progress import Progress, Say
from pipeline.registry import Record, Registry
from pipeline.registry.registry import current_alias
from pipeline.sites.models import load_prior, publish_encoder
from pipeline.sites.spec import SiteSpec
from pipeline.sites.steps import core_id, find_step, site_points, step_name

METRIC_POINTS = 5000  # target points the encoder metrics (kNN NLL proxy, spread) compare latents with


def alignment_prior(registry: Registry, site: str, fingerprint: str, prior_id: str | None = None) -> str:
    """The prior a site's encoder aligns to (``prior_id`` if given): its current site prior if that derives from
    the current core prior, else the core prior when the site's current check against that core (its
    ``site-check.<site>`` alias) measured the target data with ``fingerprint`` and said ``reuse``, or when the
    site's current check is not against that core (never checked against it). Read through the site's and the
    core's aliases: a constant number of store requests, whatever the registry holds."""
    if prior_id:
        return prior_id
    core = core_id(registry, None)
    site_prior = registry.alias(current_alias("site-prior", site))
    if site_prior and core in registry.get(site_prior).parents:
        return site_prior
    check_id = registry.alias(current_alias("site-check", site))
    check = registry.get(check_id) if check_id else None
    if check is None or core not in check.parents:
        return core
    if check.fingerprint != fingerprint:
        raise RegistryError(f"site {site}: its check against the core prior {core} measured other target data "
                            f"({check.id}); run `flowprior site check` on the current data first (or pass --prior)")
    if check.config["decision"] != "reuse":
        raise RegistryError(f"site {site}: its check {check.id} decided {check.config['decision']} but it has no "
                            f"site prior from the core prior {core}; run `flowprior site finetune` first "
                            "(or pass --prior)")
    return core


def alignment_data(spec: SiteSpec, prior: FlowPrior, say: Say | None = None, scans: tuple | None = None):
    """The site's observations, up to ``METRIC_POINTS`` target points in prior space (what the encoder
    metrics compare latents with), and the kNN NLL proxy of other target points against those: the
    value latents distributed exactly like the target would score (``scans``: the target's and the
    observations' scans, as the step made them to name itself, so neither is listed and hashed again).
    The target is held to the prior's feature contract (warnings are said with ``say``)."""
    if spec.encoder.latent_dim is not None and spec.encoder.latent_dim != prior.latent_dim:
        raise SpecError(f"{spec.path}: encoder.latent_dim is {spec.encoder.latent_dim} but the prior it aligns to "
                        f"has dimension {prior.latent_dim}")
    target_scan, observations_scan = scans or (None, None)
    observations = spec.observations.read(observations_scan)
    if problem := spec.image_mismatch(observations.dim, observations.shape):
        raise SpecError(f"{spec.path}: {problem}")
    target = site_points(spec, prior, say, target_scan).features
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


def _sweep_settings(registry: Registry, spec: SiteSpec, sweep_id: str, config, fingerprint: str,
                    say: Say):
    """The alignment settings and the prior the sweep ``sweep_id`` chose for the site (a note if the site's
    prior has moved on since)."""
    choice = sweep_choice(registry, sweep_id, spec.site)
    config = replace(config, **{k: choice[k] for k in ("lam", "lr", "draws", "steps")},
                     mode=choice.get("mode", "align"))  # sweeps recorded before modes used L_align
    prior_id = choice["prior"]
    try:
        current = alignment_prior(registry, spec.site, fingerprint)
    except RegistryError:
        current = None
    if current not in (None, prior_id):
        say(f"[site {spec.site} align] note: sweep {sweep_id} ran against {prior_id}, but the site's prior is "
            f"now {current}; the encoder will be aligned to the sweep's (run a new sweep to follow the new one)")
    return config, prior_id


def align_site(spec: SiteSpec, registry: Registry, lam: float | None = None, prior_id: str | None = None,
               sweep_id: str | None = None, say: Say = print, device: str = "cpu", force: bool | str = False,
               tags: dict[str, str] | None = None, log: str | None = None) -> Alignment:
    """Train the site's autoencoder with ``recon + lambda L_align`` against its prior, and a lambda = 0
    baseline in the same run; register the aligned encoder (``aligned_to`` the prior) with both runs' metrics
    (``log``: the store key of this step's log, kept in the record).

    With ``sweep_id`` the settings (lambda, lr, draws, steps) and the prior are the ones that sweep chose
    for the site, and the sweep becomes a parent of the encoder. Both runs train on ``device``. An alignment
    with the same inputs that already ran returns its record (and no runs), unless ``force``."""
    config = spec.alignment if lam is None else replace(spec.alignment, lam=lam)
    target_scan = spec.target.scan()
    fingerprint = target_scan.fingerprint
    observations_scan = spec.observations.scan()
    if sweep_id is not None:
        if lam is not None or prior_id is not None:
            raise SpecError("--from-sweep sets lambda and the prior; do not also pass --lambda or --prior")
        config, prior_id = _sweep_settings(registry, spec, sweep_id, config, fingerprint, say)
    prior_id = alignment_prior(registry, spec.site, fingerprint, prior_id)
    run = find_step(registry, "encoder", spec.site,
                    step_name("align", spec, prior_id, [observations_scan.fingerprint, fingerprint],
                              align=config.to_dict(), sweep=sweep_id), force, say)
    if run.done:
        return Alignment(run.done, None, None)
    started = time.perf_counter()
    prior = load_prior(registry, prior_id)
    observations, z_target, reference = alignment_data(spec, prior, say, (target_scan, observations_scan))
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

        runs[name] = train_encoder(observations.values, prior, run_config, z_target, spec.encoder.layout(),
                                   seed=spec.seed, progress=progress, device=device)
    aligned, baseline = runs["aligned"], runs["baseline"]
    record = publish_encoder(
        registry, aligned.model, {"site": spec.site, "lambda": config.lam, "prior": prior_id}, site=spec.site,
        parents=[prior_id, *([sweep_id] if sweep_id else [])], aligned_to=prior_id,
        fingerprint=observations.fingerprint, name=run.name, tags=tags,
        config={"step": run.step, "lambda": config.lam, "align": config.to_dict(),
                "encoder": aligned.model.config.to_dict(),
                "sweep": sweep_id,
                "spec": spec.path, "observations": spec.observations.uri,
                "history": aligned.history, "baseline_history": baseline.history,
                **({"log": log} if log else {})},
        metrics={**aligned.metrics, **{f"baseline_{k}": v for k, v in baseline.metrics.items()},
                 "target_knn_nll": reference, "observations": len(observations.values),
                 "rows_dropped": observations.rows_dropped, "step_seconds": time.perf_counter() - started})
    say(f"[site {spec.site} align] registered {record.id}: recon {aligned.metrics['recon']:.4f} "
        f"(lambda 0: {baseline.metrics['recon']:.4f}), knn_nll {aligned.metrics['knn_nll']:.3f} "
        f"(lambda 0: {baseline.metrics['knn_nll']:.3f}), aligned to {prior_id}")
    return Alignment(record, aligned, baseline)
