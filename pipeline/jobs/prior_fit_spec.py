"""What a core prior fit is asked for (:class:`PriorFitSpec`), without torch or Ray: the CLI takes its flags'
defaults from here, and the driver (:mod:`pipeline.jobs.prior_fit`) runs it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from pipeline.errors import SpecError
from pipeline.method.configs import NORMALISERS, PROJECTIONS, FitConfig
from pipeline.storage import validate_name
from pipeline.storage.names import fresh_run_name


@dataclass(frozen=True)
class PriorFitSpec:
    """What to fit, on what, with how many workers. Defaults are the CPU-scaled paper settings."""

    features: str  # Parquet file, folder or glob; local or s3://
    feature_column: str = "features"
    columns: tuple[str, ...] | None = None  # numeric feature columns, instead of feature_column
    filters: dict = field(default_factory=dict)
    drop_nonfinite: bool = False
    latent_dim: int | None = None  # default: the feature dimension
    projection: str | None = None  # default: none if latent_dim == feature dim, else random
    normaliser: str = "global"
    width: int = 256  # the paper's 1024 x 6 is for GPUs
    depth: int = 4
    fit: FitConfig = FitConfig()  # batch_size is the global batch, split across workers
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int = 1
    heldout_fraction: float = 0.1  # expected share of rows held out (by row hash, see pipeline.data.split)
    heldout_sample: int = 10_000  # held-out rows the driver keeps and rank 0 evaluates on
    shuffle_buffer: int = 20_000  # rows in each worker's local shuffle buffer
    read_ahead_mb: int = 64  # object store for rows read ahead of the training step (Ray Data's budget)
    cache_mb: int = 512  # a worker keeps a shard up to this size after its first epoch (else streams every epoch)
    worker_resources: dict = field(default_factory=dict)  # extra custom resources per worker, e.g. {"trainer": 1}
    report_every: int = 250  # steps between reports, held-out evaluations and checkpoints
    eval_samples: int = 1000  # prior samples compared with held-out points at each report
    name: str | None = None  # the Ray run name; rerun with the same name to resume
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name is not None:
            validate_name(self.name, "run name")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise SpecError(f"unknown projection {self.projection!r}; choose one of {', '.join(PROJECTIONS)}")
        if self.normaliser not in NORMALISERS:
            raise SpecError(f"unknown normaliser {self.normaliser!r}; choose one of {', '.join(NORMALISERS)}")
        for name in ("width", "depth", "workers", "cpus_per_worker", "report_every", "eval_samples", "heldout_sample",
                     "shuffle_buffer", "read_ahead_mb"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise SpecError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 0 < self.heldout_fraction < 0.5:
            raise SpecError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if self.cache_mb < 0:
            raise SpecError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.max_failures < 0:
            raise SpecError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.batch_per_worker % self.fit.t_group:
            raise SpecError(f"--t-group {self.fit.t_group} must divide each worker's batch ({self.batch_per_worker}: "
                             f"{self.fit.batch_size} over {self.workers} workers)")

    @property
    def batch_per_worker(self) -> int:
        return math.ceil(self.fit.batch_size / self.workers)

    def with_name(self) -> "PriorFitSpec":
        """This spec with a run name (a fresh unique one if none was given)."""
        if self.name:
            return self
        return replace(self, name=fresh_run_name("prior-fit"))

    def to_dict(self) -> dict:
        return asdict(self)


def run_settings(spec: PriorFitSpec) -> dict:
    """What makes two fits of one run name the same run (with the data's fingerprint): every setting
    but the name itself and the run's place on the cluster."""
    return {k: v for k, v in spec.to_dict().items()
            if k not in ("name", "workers", "gpu", "cpus_per_worker", "worker_resources", "max_failures",
                          "read_ahead_mb")}


def worker_resources(spec: PriorFitSpec, use_gpu: bool) -> dict[str, float]:
    """What each Ray Train worker asks for: its CPUs (= torch threads), one GPU with ``--gpu``, and any
    custom resources (a node pool's label)."""
    return {"CPU": spec.cpus_per_worker, **({"GPU": 1} if use_gpu else {}), **spec.worker_resources}
