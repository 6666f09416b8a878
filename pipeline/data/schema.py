"""The feature contract between a prior and the data it meets: which columns, in which order and types,
and what the fit saw of each (per-column mean and standard deviation of the raw features).

    schema = FeatureSchema.measure(columns, dtypes, x)   # x: (n, d) features, at fit time
    schema.require_columns(site_columns, where)           # DataError naming the first differing column
    schema.drift(FeatureSchema.measure(...))               # warnings: a column whose units look changed

A prior carries its schema in ``info["features"]`` (inside its checkpoint) and its registry record in
``config["features"]``. Priors fitted before contracts have none; they are checked by column count only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import DataError

DRIFT_SD = 10.0  # a site column whose mean is this many core sds away from the core's looks like other units
DRIFT_SCALE = 10.0  # ... or whose sd is this many times larger or smaller than the core's


@dataclass(frozen=True)
class FeatureSchema:
    """Columns (in order), their Parquet types, and the per-column mean and sd the fit saw."""

    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]

    def __post_init__(self) -> None:
        fields = {k: tuple(getattr(self, k)) for k in ("columns", "dtypes", "mean", "sd")}
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if len({len(v) for v in fields.values()}) != 1:
            raise ValueError(f"a feature schema needs one dtype, mean and sd per column, got {fields}")

    @classmethod
    def measure(cls, columns: Sequence[str], dtypes: Sequence[str], x: np.ndarray) -> "FeatureSchema":
        """The schema of features ``x`` (n, d) read from ``columns`` of types ``dtypes``."""
        x = np.asarray(x, dtype=np.float64)
        return cls(tuple(columns), tuple(dtypes), tuple(x.mean(0).tolist()), tuple(x.std(0).tolist()))

    @classmethod
    def from_moments(cls, columns: Sequence[str], dtypes: Sequence[str], mean: np.ndarray,
                     covariance: np.ndarray) -> "FeatureSchema":
        """The schema from streamed moments: ``mean`` (d,) and ``covariance`` (d, d)."""
        return cls(tuple(columns), tuple(dtypes), tuple(np.asarray(mean, float).tolist()),
                   tuple(np.sqrt(np.clip(np.diag(covariance), 0, None)).tolist()))

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSchema":
        return cls(**{k: tuple(data[k]) for k in ("columns", "dtypes", "mean", "sd")})

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def dim(self) -> int:
        return len(self.columns)

    def require_columns(self, columns: Sequence[str], where: str) -> None:
        """Refuse ``columns`` unless they are this schema's, by name and in order; the ``DataError`` names
        the first position where they differ (counted from 1) and how many columns were given and expected."""
        columns = list(columns)
        if columns == list(self.columns):
            return
        count = "" if len(columns) == self.dim else f"; {len(columns)} feature columns given, the prior was " \
                                                     f"fitted on {self.dim}"
        for i, (mine, theirs) in enumerate(zip(self.columns, columns, strict=False)):  # the common prefix
            if mine != theirs:
                moved = f" (the prior has {theirs!r} as column {self.columns.index(theirs) + 1})" \
                    if theirs in self.columns else ""
                raise DataError(f"{where}: feature column {i + 1} of {len(columns)} is {theirs!r} but the prior was "
                                f"fitted with {mine!r} there{moved}{count}; the prior's columns, in order: "
                                f"{', '.join(self.columns)}")
        missing, extra = self.columns[len(columns):], columns[len(self.columns):]
        raise DataError(f"{where}: {len(columns)} feature columns but the prior was fitted on {self.dim}; "
                        + (f"missing {', '.join(missing)}" if missing else f"extra {', '.join(extra)}")
                        + f" (the prior's columns, in order: {', '.join(self.columns)})")

    def drift(self, site: "FeatureSchema") -> list[str]:
        """Warnings for ``site`` columns whose statistics are wildly off this schema's (units changed?):
        a mean more than ``DRIFT_SD`` of this schema's sds away, or an sd off by more than ``DRIFT_SCALE``x;
        and for a column whose Parquet type differs."""
        warnings = []
        for name, dtype, mean, sd, site_dtype, site_mean, site_sd in zip(
                self.columns, self.dtypes, self.mean, self.sd, site.dtypes, site.mean, site.sd, strict=True):
            if dtype != site_dtype:
                warnings.append(f"column {name}: type {site_dtype}, the prior was fitted on {dtype}")
            if sd > 0 and abs(site_mean - mean) > DRIFT_SD * sd:
                warnings.append(f"column {name}: mean {site_mean:.4g} is {abs(site_mean - mean) / sd:.0f} core sd "
                                f"from the core's {mean:.4g} (other units?)")
            ratio = site_sd / sd if sd > 0 else (np.inf if site_sd > 0 else 1.0)
            if not 1 / DRIFT_SCALE <= ratio <= DRIFT_SCALE:
                warnings.append(f"column {name}: sd {site_sd:.4g} is {ratio:.3g}x the core's {sd:.4g} (other units?)")
        return warnings
