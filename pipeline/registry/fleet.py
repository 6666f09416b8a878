"""The fleet at a glance: per site, its current encoder and prior, whether it is stale, its current site prior
(an adapter of its core or a full prior, and its artifact's size), its last check and its last sweep choice
(``flowprior fleet status``, and the table of ``fleet report``).

Everything comes from two reads of the store: the records (one listing, the snapshot and the records
it lacks) and the aliases (one listing of every alias and one concurrent read of their latest entries),
so its cost on S3 does not grow with two requests per site.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pipeline.formatting import size
from pipeline.registry.aliases import utc
from pipeline.registry.records import Record, artifact_bytes, prior_method
from pipeline.registry.registry import CORE_ALIAS, Registry, current_alias, family

CHECK_NUMBERS = ("probe_gain", "fm_ratio", "nll_gap", "mmd")
SITE_ALIASES = ("encoder", "site-prior", "site-check")  # the per-site aliases, ``<kind>.<site>``
SWEEP_CHOICE = ("mode", "lam", "lr", "draws", "objective", "feasible")


@dataclass
class SiteStatus:
    site: str
    encoder: str | None = None  # the site's current encoder
    encoder_at: str | None = None
    aligned_to: str | None = None  # the prior that encoder is aligned to
    aligned_kind: str | None = None  # "prior" (a core prior) or "site-prior"
    aligned_core: str | None = None  # the core prior that prior is, or derives from
    stale: bool | None = None  # aligned outside the current core prior's family (None: no encoder)
    site_prior: str | None = None  # the site's current site prior
    site_prior_method: str | None = None  # "adapter" (of its core) or "full"
    site_prior_bytes: int | None = None  # its artifact's size (None: unknown, or the record is unreadable)
    check: str | None = None  # the site's latest check
    check_at: str | None = None
    decision: str | None = None
    checked_against: str | None = None  # the prior the check measured
    check_numbers: dict = field(default_factory=dict)
    sweep: str | None = None  # the latest sweep that chose a setting for the site
    sweep_at: str | None = None
    sweep_choice: dict = field(default_factory=dict)


@dataclass
class Fleet:
    store: str
    core: str | None  # the current core prior
    core_at: str | None
    sites: list[SiteStatus]
    read_at: str  # when the registry was read (ages are relative to it)

    @property
    def stale(self) -> list[str]:
        return [s.site for s in self.sites if s.stale]

    @property
    def site_priors(self) -> int:
        """How many sites have a current site prior."""
        return sum(s.site_prior is not None for s in self.sites)

    @property
    def adapters(self) -> int:
        """How many of the current site priors are adapters of their core."""
        return sum(s.site_prior_method == "adapter" for s in self.sites)

    @property
    def site_prior_bytes(self) -> int:
        """What the current site priors' artifacts take in the store (the sizes their records hold)."""
        return sum(s.site_prior_bytes or 0 for s in self.sites)

    @property
    def unsized(self) -> int:
        """How many current site priors have no known size (records from before sizes were kept)."""
        return sum(s.site_prior is not None and s.site_prior_bytes is None for s in self.sites)

    def to_dict(self) -> dict:
        return {**asdict(self), "stale": self.stale, "site_priors": self.site_priors, "adapters": self.adapters,
                "site_prior_bytes": self.site_prior_bytes, "unsized": self.unsized}


def site_prior_summary(fleet: Fleet) -> str:
    """The fleet's current site priors in one line: ``2 current (1 adapter), 1.33 MB in the store``."""
    adapters = f"{fleet.adapters} adapter{'' if fleet.adapters == 1 else 's'}"
    unsized = f" (+{fleet.unsized} of unknown size)" if fleet.unsized else ""
    return f"{fleet.site_priors} current ({adapters}), {size(fleet.site_prior_bytes)} in the store{unsized}"


def core_of(record: Record, by_id: dict[str, Record]) -> str | None:
    """The core prior ``record`` is, or derives from: the nearest ``prior`` up its parents."""
    queue, seen = [record.id], set()
    while queue:
        rid = queue.pop(0)
        if rid in seen or rid not in by_id:
            continue
        seen.add(rid)
        if by_id[rid].kind == "prior":
            return rid
        queue.extend(by_id[rid].parents)
    return None


def sweep_choices(sweep: Record) -> dict[str, dict]:
    """``{site: the setting}`` a sweep record chose (its ``config["choices"]``); a record edited by hand or
    written by another version may hold anything there, and only an object per site counts as a choice."""
    choices = sweep.config.get("choices")
    if not isinstance(choices, dict):
        return {}
    return {site: choice for site, choice in choices.items() if isinstance(choice, dict)}


def fleet_status(registry: Registry) -> Fleet:
    """One ``SiteStatus`` per site the registry knows (a record or an alias names it), sorted by site."""
    read_at = datetime.now(timezone.utc)
    with ThreadPoolExecutor(1) as pool:  # the two listings overlap (on S3 each is pages of round trips)
        pending = pool.submit(registry.records)
        moves = registry.current()
        records = pending.result()
    by_id = {r.id: r for r in records}
    target = {alias: move.target for alias, move in moves.items()}
    core = target.get(CORE_ALIAS)
    inside = family(records, core) if core else set()
    sites = {r.site for r in records if r.site} | {a.split(".", 1)[1] for a in target
                                                   if a.split(".", 1)[0] in SITE_ALIASES and "." in a}
    last_sweep: dict[str, tuple[Record, dict]] = {}
    for sweep in (r for r in records if r.kind == "sweep"):  # records come oldest first: the last one wins
        last_sweep.update({site: (sweep, choice) for site, choice in sweep_choices(sweep).items()})
    statuses = []
    for site in sorted(sites):
        status = SiteStatus(site)
        encoder = by_id.get(target.get(current_alias("encoder", site), ""))
        if encoder is not None:
            status.encoder, status.encoder_at, status.aligned_to = encoder.id, encoder.created_at, encoder.aligned_to
            prior = by_id.get(encoder.aligned_to or "")
            if prior is not None:
                status.aligned_kind, status.aligned_core = prior.kind, core_of(prior, by_id)
            status.stale = core is not None and encoder.aligned_to not in inside
        status.site_prior = target.get(current_alias("site-prior", site))
        site_prior = by_id.get(status.site_prior or "")
        if site_prior is not None:
            status.site_prior_method, status.site_prior_bytes = prior_method(site_prior), artifact_bytes(site_prior)
        check = by_id.get(target.get(current_alias("site-check", site), ""))
        if check is not None:
            status.check, status.check_at, status.decision = check.id, check.created_at, check.config.get("decision")
            status.checked_against = check.parents[0] if check.parents else None
            status.check_numbers = {k: check.metrics[k] for k in CHECK_NUMBERS if k in check.metrics}
        if site in last_sweep:
            sweep, choice = last_sweep[site]
            status.sweep, status.sweep_at = sweep.id, sweep.created_at
            status.sweep_choice = {k: v for k, v in choice.items() if k in SWEEP_CHOICE}
        statuses.append(status)
    core_record = by_id.get(core or "")
    return Fleet(registry.store.uri, core, core_record.created_at if core_record else None, statuses,
                 read_at.isoformat(timespec="seconds"))


def age(created_at: str | None, now: str) -> str:
    """How long before ``now`` a time was, the way people say it: ``45s``, ``12m``, ``5h``, ``3d`` ("-": never)."""
    if created_at is None:
        return "-"
    seconds = max(0.0, (utc(now) - utc(created_at)).total_seconds())
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f}{unit}"
    return f"{seconds:.0f}s"
