"""What a demo run does: the core prior's spec, the site specs it runs (CI-sized with ``quick``), the sweep, and
distribution matching for comparison. No torch: the ``flowprior demo`` command takes its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from pipeline.datasets import la_haute_borne as lhb
from pipeline.demo import SITES
from pipeline.errors import SpecError
from pipeline.jobs.prior_fit_spec import PriorFitSpec
from pipeline.method.configs import FitConfig
from pipeline.sites.spec import SiteSpec, load_site_spec
from pipeline.sweeps.spec import SweepSpec, load_sweep_spec

# distribution matching (``--match``): at lambda 0.1 for 4,000 steps the latents' spread is 0.79-0.91 and
# their kNN NLL proxy that of the prior's own samples, at 3.5-7x the median reconstruction error of a
# lambda = 0 run of as many steps (docs/measured.md, the wind farm; benchmarks/alignment_modes.py). The demo
# runs it for the plain alignment's 1,500 steps (spread 0.74-0.99 on its four sites, 2026-12-06).
MATCH_LAMBDA = 0.1
MATCH_STEPS = 1500


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("flowprior-demo")
    store: str | None = None  # default: <out>/store
    sites: Path = SITES
    core_steps: int = 2000
    latent_dim: int = 7  # 98% of the pooled features' variance (nacelle and wind direction nearly coincide)
    width: int = 128
    depth: int = 3
    quick: bool = False  # CI-sized: a few hundred steps everywhere
    address: str | None = None
    sweep: Path | None = None  # a sweep spec over the demo's sites: sweep, then align with its choices
    match_lambda: float | None = None  # also align with distribution matching at this lambda (MATCH_LAMBDA)
    match_steps: int = MATCH_STEPS  # its steps (quick: the plain alignment's)
    tags: dict[str, str] = field(default_factory=dict)  # on every record the demo registers
    verbose: bool = False  # every line of every site step, and Ray's own output

    def core_spec(self) -> PriorFitSpec:
        """The core prior: the healthy 2014 rows of all four turbines, PCA to ``latent_dim``, a fresh run name."""
        steps = 300 if self.quick else self.core_steps
        return PriorFitSpec(
            features=str(lhb.PARQUET), columns=lhb.FEATURES, filters={"year": 2014, "fault": False},
            drop_nonfinite=True, latent_dim=self.latent_dim, projection="pca", normaliser="per-dim", width=self.width,
            depth=self.depth, fit=FitConfig(steps=steps, warmup=min(200, steps // 10)),
            report_every=max(50, steps // 8), name=f"demo-core-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")

    def sweep_spec(self, specs: list[SiteSpec]) -> SweepSpec | None:
        """The sweep spec with the demo's own site specs (quick: 200 steps in epochs of 50)."""
        if self.sweep is None:
            return None
        spec = load_sweep_spec(self.sweep)
        ours = {s.site: s for s in specs}
        if sorted(ours) != sorted(s.site for s in spec.sites):
            raise SpecError(f"{self.sweep}: sweeps {', '.join(s.site for s in spec.sites)} but the demo runs "
                             f"{', '.join(ours)}")
        spec = replace(spec, sites=tuple(ours[s.site] for s in spec.sites))
        if self.quick:
            spec = replace(spec, steps=200, epoch_steps=50,
                           scheduler=replace(spec.scheduler, grace_epochs=min(spec.scheduler.grace_epochs, 4)))
        return spec

    def site_specs(self) -> list[SiteSpec]:
        paths = sorted(self.sites.glob("*.yaml"))
        if not paths:
            raise SpecError(f"{self.sites}: no site specs (*.yaml)")
        specs = [load_site_spec(p) for p in paths]
        unknown = [s.site for s in specs if s.site not in lhb.TURBINES]
        if unknown:
            raise SpecError(f"{self.sites}: the demo runs the La Haute Borne turbines ({', '.join(lhb.TURBINES)}); "
                             f"{', '.join(unknown)} is not one (use `flowprior site ...` for other sites)")
        if not self.quick:
            return specs
        return [replace(s, finetune=replace(s.finetune, steps=100, refit_steps=200, log_every=50),
                        alignment=replace(s.alignment, steps=200, log_every=50, eval_points=1000)) for s in specs]

    def match_specs(self, specs: list[SiteSpec]) -> list[SiteSpec]:
        """The site specs aligned with distribution matching at ``match_lambda`` for ``match_steps``."""
        return [replace(s, alignment=replace(s.alignment, mode="match", lam=self.match_lambda,
                                             steps=s.alignment.steps if self.quick else self.match_steps))
                for s in specs]
