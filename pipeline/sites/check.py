"""The site check step: measure how well a prior explains a site's held-out target features, decide
reuse / finetune / refit (:mod:`pipeline.sites.decision`) and record it as a ``site-check``."""

from __future__ import annotations

import time

from pipeline.errors import DataError, RegistryError
from pipeline.progress import Say
from pipeline.registry import Record, Registry
from pipeline.sites.decision import MIN_CHECK_POINTS, decide, measure, probe_finetune
from pipeline.sites.models import load_prior
from pipeline.sites.spec import SiteSpec
from pipeline.sites.steps import core_id, find_step, naming_the_site, site_points, step_name

CORE_METRICS = ("heldout_fm", "heldout_nll_proxy", "nll_samples")  # what a check compares the site with


def check_site(spec: SiteSpec, registry: Registry, prior_id: str | None = None, say: Say = print,
               force: bool | str = False, tags: dict[str, str] | None = None, log: str | None = None,
               device: str = "cpu", scan=None) -> Record:
    """Measure how well the prior (default: the current core) explains the site's held-out target
    features, decide reuse / finetune / refit, and record it as a ``site-check`` (``log``: the store key of
    this step's log, kept in the record). A step with the same inputs that already ran returns its record,
    unless ``force`` (see :func:`pipeline.sites.steps.step_name`). ``scan``: the target as the caller already
    scanned it. ``device`` is accepted for the fan-out's sake: a check is small and runs on the CPU."""
    prior_id = core_id(registry, prior_id)
    record = registry.get(prior_id)
    missing = [k for k in CORE_METRICS if record.metrics.get(k) is None]
    if missing:
        raise RegistryError(f"prior {prior_id} has no {', '.join(missing)} in its metrics (fitted before site "
                            "checks existed); refit it with `flowprior prior fit`")
    scan = scan or spec.target.scan()
    run = find_step(registry, "site-check", spec.site, step_name("check", spec, prior_id, [scan.fingerprint]),
                    force, say)
    if run.done:
        return run.done
    started = time.perf_counter()
    prior = load_prior(registry, prior_id)
    points = site_points(spec, prior, say, scan)
    features, heldout = points.features, points.heldout
    if len(heldout) < MIN_CHECK_POINTS:
        raise DataError(f"{spec.path}: target {spec.target.uri} has {len(features.values)} rows, so "
                        f"{len(heldout)} held out (finetune.heldout_fraction {spec.finetune.heldout_fraction:g}); a "
                        f"check needs at least {MIN_CHECK_POINTS} held-out points to decide anything")
    z = prior.to_prior(features.values[heldout])  # (m, d1)
    numbers = measure(prior, z, record.metrics["heldout_fm"], record.metrics["heldout_nll_proxy"],
                      int(record.metrics["nll_samples"]), seed=spec.seed)
    settings = spec.finetune
    with naming_the_site(spec):  # a number that is not finite (a diverging probe) decides nothing
        numbers |= probe_finetune(prior, prior.to_prior(features.values[points.train]), z, settings.probe_steps,
                                  settings.lr, settings.batch_size, seed=spec.seed, adapter=settings.adapter())
        decision = decide(numbers, spec.thresholds)
    check = registry.register("site-check", site=spec.site, parents=[prior_id], fingerprint=features.fingerprint,
                              name=run.name, tags=tags,
                              config={"decision": decision, "thresholds": spec.thresholds.to_dict(), "step": run.step,
                                      "probe_method": settings.method,
                                      "spec": spec.path, "target": spec.target.uri,
                                      "contract_warnings": points.warnings, **({"log": log} if log else {})},
                              metrics={**numbers, "rows_dropped": features.rows_dropped,
                                       "step_seconds": time.perf_counter() - started})
    t = spec.thresholds
    say(f"[site {spec.site} check] {decision}: a {settings.probe_steps}-step probe fine-tune ({settings.method}) "
        f"gains {numbers['probe_gain']:.1%} held-out FM (> {t.finetune_gain:.0%} finetunes), fm_ratio "
        f"{numbers['fm_ratio']:.3f} (> {t.refit_fm:g} refits), nll_gap {numbers['nll_gap']:+.3f} nats, "
        f"mmd {numbers['mmd']:.4f}; recorded {check.id}")
    return check
