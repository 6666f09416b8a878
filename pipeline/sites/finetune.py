"""The site prior step: fine-tune the core prior on a site's target features, or refit one in its space
(:mod:`pipeline.sites.site_prior`), and register it as a ``site-prior`` whose parent is the core."""

from __future__ import annotations

import time
from dataclasses import replace

from pipeline.formatting import size
from pipeline.method.metrics import heldout_fm
from pipeline.progress import Progress, Say
from pipeline.registry import Record, Registry
from pipeline.sites.check import check_site
from pipeline.sites.models import load_prior, publish_prior
from pipeline.sites.site_prior import site_fit_config, train_site_prior
from pipeline.sites.spec import SiteSpec
from pipeline.sites.steps import core_id, find_step, naming_the_site, site_points, step_name


def finetune_site(spec: SiteSpec, registry: Registry, mode: str = "auto", prior_id: str | None = None,
                  say: Say = print, device: str = "cpu", precision: str = "fp32", method: str | None = None,
                  force: bool | str = False, tags: dict[str, str] | None = None,
                  log: str | None = None) -> Record | None:
    """Train and register a ``site-prior`` (parent: the core prior) on ``device``, the flow-matching
    forward in ``precision``. ``mode`` ``auto`` follows the site's check of its current target data against
    that prior (:func:`check_site`: found by its name, or run now) and does nothing on ``reuse``. A fine-tune
    trains the ``method`` of the spec (``finetune.method``) unless ``method`` overrides it: an ``adapter`` of the
    core, registered as the adapter alone, or every weight (``full``; a refit is always whole). A fine-tune
    with the same inputs that already ran returns its record, unless ``force``. ``log``: the store key of
    this step's log, kept in the record."""
    if method is not None:
        spec = replace(spec, finetune=replace(spec.finetune, method=method))
    prior_id = core_id(registry, prior_id)
    scan = spec.target.scan()
    if mode == "auto":
        check = check_site(spec, registry, prior_id, say, tags=tags, log=log, scan=scan)
        mode = check.config["decision"]
        if mode == "reuse":
            say(f"[site {spec.site}] decision reuse ({check.id}): the core prior serves this site, nothing to train")
            return None
    run = find_step(registry, "site-prior", spec.site,
                    step_name("finetune", spec, prior_id, [scan.fingerprint], mode=mode, precision=precision), force,
                    say)
    if run.done:
        return run.done
    started = time.perf_counter()
    core = load_prior(registry, prior_id).to(device)
    points = site_points(spec, core, say, scan)
    features = points.features
    z_train, z_heldout = core.to_prior(features.values[points.train]), core.to_prior(features.values[points.heldout])
    settings = spec.finetune
    steps = settings.steps if mode == "finetune" else settings.refit_steps
    fit = site_fit_config(core, mode, steps, settings.lr, settings.batch_size, settings.log_every, precision)
    adapter = settings.adapter() if mode == "finetune" else None
    start = ("scratch in the space of " if mode == "refit" else "the weights of " if adapter is None else
             f"a rank-{adapter.rank} adapter of the frozen ")
    say(f"[site {spec.site} {mode}] {len(z_train)} training / {len(z_heldout)} held-out rows, {steps} steps "
        f"from {start}{prior_id} on {device}")
    bar = Progress(f"site {spec.site} {mode}", steps, "steps", say)
    progress = lambda h: bar.update(h["step"], f"train_fm {h['train_fm']:.4f}  heldout_fm {h['heldout_fm']:.4f}")  # noqa: E731
    with naming_the_site(spec):  # a diverged training registers nothing
        site_prior = train_site_prior(core, z_train, z_heldout, mode, fit, seed=spec.seed, progress=progress,
                                      adapter=adapter)
    reuse_fm = heldout_fm(core.velocity, z_heldout, spec.seed)
    final = site_prior.info["history"][-1]
    record = publish_prior(
        registry, site_prior, kind="site-prior", site=spec.site, parents=[prior_id], fingerprint=features.fingerprint,
        name=run.name, tags=tags,
        config={"step": run.step, "mode": mode, "fit": fit.to_dict(), "spec": spec.path, "target": spec.target.uri,
                "contract_warnings": points.warnings, "history": site_prior.info["history"],
                **({"log": log} if log else {})},
        metrics={"heldout_fm": final["heldout_fm"], "heldout_fm_core": reuse_fm, "steps": steps,
                 "train_rows": len(z_train), "heldout_rows": len(z_heldout),
                 "step_seconds": time.perf_counter() - started})
    say(f"[site {spec.site} {mode}] held-out FM {reuse_fm:.4f} (core) -> {final['heldout_fm']:.4f}; "
        f"registered {record.id} ({record.config['method']}, {size(record.config['artifact_bytes'])})")
    return record
