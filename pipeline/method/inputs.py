"""Validation of tensors handed to the method: shape, dimension and finiteness."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import DataError


def as_points(x, name: str, dim: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` as a finite floating tensor of shape ``(n, dim)``, or a ``ValueError`` naming the problem."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty (0 rows)")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} has dimension {x.shape[1]}, expected {dim}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if dtype is not None:
        x = x.to(dtype)
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.any(1).nonzero().flatten()
        raise DataError(
            f"{name} has {int(bad.sum())} NaN/inf values in {len(rows)} rows "
            f"(first at row {int(rows[0])}); clean or drop them first"
        )
    return x
