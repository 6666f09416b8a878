"""Site steps on Ray: every site's step as its own task, or every site's whole path as a chain of tasks.

    run_sites(check_site, specs, store)                       # one Ray task per site, in parallel
    run_sites(align_site, specs, store, lam=0.002, gpu=0.25)  # four sites share each GPU
    run_site_paths(specs, store, until="align")               # check -> finetune/refit -> align, per site

The steps themselves (``pipeline.sites.check``, ``.finetune``, ``.align``) are ordinary functions
``step(spec, registry, ...)``; this module only fans them out. Each task asks for 1 CPU (its one torch
thread) and a GPU share if asked, so many sites run at once on a cluster and two at a time on a 2-core
laptop. Every result is registered by the task that produced it (the registry takes many writers), so a
site that fails does not lose the others' work, and a site's chain never waits for another site.

What a fleet run prints: one progress line (done / in flight / failed / ETA; rewritten in place on a
terminal, else every tenth of the fleet) and one line per finished site. Each step's own lines go to
the task's stdout (the worker's log) and to ``ray-runs/<run>/<site>/<step>.log`` in the store, which the
step's record names (``config.log``); ``verbose`` prints them too, each site's lines together.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import FlowpriorError, SpecError
from pipeline.jobs.site_tasks import cause, compact_registry, connect, remote, run_folder, run_step, summary
from pipeline.progress import FleetProgress, Say
from pipeline.registry import Record, Registry
from pipeline.storage import Store

SITE_RETRIES = 3  # reruns of a site task whose worker died (a lost node, an OOM kill)
UNTIL = ("check", "finetune", "align")  # a site's path, in order


def run_sites(step: Callable, specs: list, store: Store, address: str | None = None, say: Say = print,
              gpu: float = 0.0, retries: int = SITE_RETRIES, verbose: bool = False, **kwargs: object) -> list:
    """``step(spec, registry, device=..., say=..., log=..., **kwargs)`` for every site as parallel Ray tasks;
    results in ``specs`` order. Each task asks for 1 CPU and ``gpu`` GPUs (a share such as 0.25 packs four
    sites on a GPU) and trains on ``cuda`` when it has one. On the embedded local Ray without GPUs a GPU
    request falls back to CPUs (with a note); a cluster's autoscaler may add GPU nodes.

    A task whose worker dies (a lost spot node, an OOM kill) runs again, up to ``retries`` times; the
    site steps are idempotent (``pipeline.sites.steps.step_name``), so a rerun after a registration registers
    nothing new. An exception the step raises (bad data, a bad spec) is not retried.

    Every site runs to its end; if any failed, the first failure is raised after the rest finished
    (their results are already registered)."""
    import ray

    gpu = connect(address, gpu, say)
    kwargs["device"] = "cuda" if gpu else "cpu"
    if kwargs.get("force") is True:  # one token for every attempt: a retried forced task finds its own run
        kwargs["force"] = secrets.token_hex(4)
    label = getattr(step, "__name__", "step").removesuffix("_site")
    folder = run_folder(f"site-{label}")
    task = remote(run_step, retries, gpu)
    refs = {task.remote(step, spec, store, kwargs, f"{folder}/{spec.site}/{label}.log"): spec.site for spec in specs}
    results, errors, pending = {}, [], list(refs)
    progress = FleetProgress(f"sites {label}", len(refs), say, live=say is print)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        site = refs.pop(done[0])
        try:
            output = ray.get(done[0])
        except Exception as error:  # noqa: BLE001 - the step raised, its worker crashed or was OOM-killed, its
            # node was lost: that site failed, and every other site runs on
            errors.append(cause(error))
            progress.finished(f"[site {site}] failed: {type(errors[-1]).__name__}: {errors[-1]}", failed=True)
            continue
        results[site] = output.value
        for line in summary(output.lines, verbose)[:-1]:
            say(line)
        progress.finished(output.lines[-1] if output.lines else f"[site {site}] done")
    compact_registry(store, len(specs), say)
    if errors:
        raise errors[0]
    return [results[spec.site] for spec in specs]


@dataclass
class SitePath:
    """Where one site's path (check -> site prior -> aligned encoder) got: the records of its steps, which
    step failed and why, and the lines its steps said to show (their warnings, or all of them with ``verbose``)."""

    site: str
    check: Record | None = None
    site_prior: Record | None = None
    encoder: Record | None = None
    failed: str | None = None  # "<step>: <error>"
    lines: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str | None:
        return self.check.config["decision"] if self.check else None

    @property
    def prior(self) -> str | None:
        """The prior the site uses: its encoder's, else its site prior, else the prior it was checked against."""
        if self.encoder:
            return self.encoder.aligned_to
        return self.site_prior.id if self.site_prior else self.check.parents[0] if self.check else None

    def line(self) -> str:
        """The site's one line when its path ends."""
        if self.failed:
            return f"[site {self.site}] failed at {self.failed}"
        steps = [f"{self.decision} ({self.check.id})" if self.check else None,
                 f"site prior {self.site_prior.id}" if self.site_prior else None,
                 f"encoder {self.encoder.id} -> {self.encoder.aligned_to}" if self.encoder else None]
        return f"[site {self.site}] done: {', '.join(s for s in steps if s)}"


def _path_step(step: str, spec, store: Store, kwargs: dict, log: str, verbose: bool,
               path: SitePath | None = None) -> SitePath:
    """One step of a site's path, in its task: run it with the earlier steps' results, add its record."""
    from pipeline.sites.align import align_site
    from pipeline.sites.check import check_site
    from pipeline.sites.finetune import finetune_site

    path = path or SitePath(spec.site)
    if path.failed:
        return path
    try:
        if step == "check":
            output = run_step(check_site, spec, store, kwargs, log)
            path.check = output.value
        elif step == "finetune":
            if path.decision == "reuse":
                return path
            output = run_step(finetune_site, spec, store, {**kwargs, "mode": path.decision}, log)
            path.site_prior = output.value
        else:  # aligned to the new site prior, else to the prior the site was checked against
            aligned_to = path.site_prior.id if path.site_prior else kwargs["prior_id"]
            output = run_step(align_site, spec, store, {**kwargs, "prior_id": aligned_to}, log)
            path.encoder = output.value.record
    except Exception as error:  # noqa: BLE001 - the site's path ends here; the other sites run on
        path.failed = f"{step}: {type(error).__name__}: {error}"
        return path
    shown = output.lines if verbose else [line for line in output.lines if "warning:" in line]
    path.lines += [line for line in shown if line not in path.lines]  # a warning an earlier step gave, once
    return path


def _finished(spec, registry: Registry, prior: str, until: str) -> tuple | None:
    """:func:`~pipeline.sites.steps.finished_path`, or ``None`` where it cannot tell (the site's task will say why)."""
    from pipeline.sites.steps import finished_path

    try:
        return finished_path(spec, registry, prior, until)
    except (FlowpriorError, OSError):
        return None


def _report(path: SitePath, progress: FleetProgress, say: Say) -> None:
    """A finished site's lines (kept only until printed: the driver keeps the records) and its one line."""
    for line in path.lines:
        say(line)
    path.lines = []
    progress.finished(path.line(), failed=path.failed is not None)


def run_site_paths(specs: list, store: Store, until: str = "align", address: str | None = None, say: Say = print,
                   gpu: float = 0.0, retries: int = SITE_RETRIES, verbose: bool = False,
                   prior_id: str | None = None, force: bool = False,
                   tags: dict[str, str] | None = None) -> list[SitePath]:
    """Every site's path as a chain of Ray tasks: ``check``, then (``until`` ``finetune`` or ``align``) a
    fine-tune or refit where the check decided so, then (``until`` ``align``) the encoder aligned to the site's
    prior. Each step is its own task (1 CPU; fine-tunes and alignments also ``gpu``) that starts as soon as
    its site's previous step is done, whatever the other sites are doing, and keeps its own record and name,
    so a rerun runs only what changed. A site whose every step already ran (:func:`finished_path`, read in the
    driver) starts no task: a rerun of a finished fleet starts no worker. A failing step ends its site's path
    only. Returns the paths in ``specs`` order; the driver's memory holds each site's records until it returns."""
    import ray

    from pipeline.sites.steps import core_id

    if until not in UNTIL:
        raise SpecError(f"until is one of {', '.join(UNTIL)}; got {until!r}")
    registry = Registry(store)
    prior = core_id(registry, prior_id)  # the whole fleet against one prior, even if `core` moves meanwhile
    kwargs = {"prior_id": prior, "force": secrets.token_hex(4) if force else False, "tags": tags}
    folder = run_folder("site-run")
    steps = UNTIL[: UNTIL.index(until) + 1]
    say(f"[site run] {len(specs)} sites: {' -> '.join(steps)} against {prior}; each step's log is under "
        f"{store.uri_of(folder)}/<site>/")
    progress = FleetProgress("site run", len(specs), say, live=say is print)
    results: dict[str, SitePath] = {}
    refs, tasks = {}, None
    for spec in specs:
        finished = None if force else _finished(spec, registry, prior, until)
        if finished is not None:
            results[spec.site] = path = SitePath(spec.site, *finished)
            path.lines = [f"[site {spec.site}] {record.name} already ran: {record.id} (rerun it with --force)"
                          for record in finished if record] if verbose else []
            _report(path, progress, say)
            continue
        if tasks is None:  # the first site with a step to run: join or start Ray
            gpu = connect(address, gpu, say)
            tasks = remote(_path_step, retries, 0.0), remote(_path_step, retries, gpu)
        ref = None
        for step in steps:
            device = "cuda" if gpu and step != "check" else "cpu"
            ref = tasks[step != "check"].remote(step, spec, store, {**kwargs, "device": device},
                                                f"{folder}/{spec.site}/{step}.log", verbose, ref)
        refs[ref] = spec.site
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        site = refs.pop(done[0])
        try:
            path = ray.get(done[0])
        except Exception as error:  # noqa: BLE001 - a worker that died more than `retries` times
            path = SitePath(site, failed=f"a task: {type(cause(error)).__name__}: {cause(error)}")
        results[site] = path
        _report(path, progress, say)
    compact_registry(store, len(specs), say)
    return [results[spec.site] for spec in specs]
