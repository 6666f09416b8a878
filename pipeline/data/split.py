"""The held-out split as a function of each row's values: no permutation, no row index, no memory.

    split = Split(heldout_fraction=0.1, seed=0)
    h, heldout = split.of(x)           # (n,) uint64 row hashes, (n,) bool: h / 2^64 < 0.1
    train, heldout = split_indices(x, 0.1, seed=0)   # in memory: row indices, each side >= MIN_ROWS

A row's split depends only on its feature values and the seed, so it is the same whether the
rows are read by one process or by a thousand Ray tasks, in any order, from any copy of the data
and however its files are partitioned or compacted. Identical rows (repeated readings) share a
split, so none leaks from training into the held-out set. The held-out share is ``fraction`` in
expectation (binomial: about ``sqrt(n f (1 - f))`` rows either way). The prior fit (streamed, in Ray
tasks) and the site jobs (in memory) use this one rule, and refuse data with fewer than
``MIN_ROWS`` rows on either side.

The hash is SplitMix64's finaliser folded over the columns (``h <- mix(h ^ bits(x_j))``), with
``-0.0`` counted as ``0.0``; it is a fixed function, so a record's split can be recomputed later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataError

MIN_ROWS = 2  # rows each side of a split needs (a held-out loss of one row is not a measurement)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


HASH_CHUNK = 16_384  # rows hashed at a time: a chunk's columns and its hashes stay in the CPU's cache


def _mix(h: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic), in place in ``h`` (and returned);
    ``scratch`` is a spare array of ``h``'s shape."""
    t = np.empty_like(h) if scratch is None else scratch
    for shift, multiplier in ((30, _M1), (27, _M2), (31, None)):
        np.right_shift(h, np.uint64(shift), out=t)
        np.bitwise_xor(h, t, out=h)
        if multiplier is not None:
            np.multiply(h, multiplier, out=h)
    return h


def row_hash(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 rows -> ``(n,)`` uint64 hashes, a fixed function of the values and ``seed``:
    ``h_0 = mix(seed * phi + phi)``, ``h_j = mix(h_{j-1} ^ bits(x_j))``, ``h = h_d``."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        start = _mix(np.array([np.uint64(seed % 2**64) * _GOLDEN + _GOLDEN], dtype=np.uint64))[0]
    out = np.empty(len(x), dtype=np.uint64)
    scratch = np.empty(min(len(x), HASH_CHUNK), dtype=np.uint64)
    for first in range(0, len(x), HASH_CHUNK):
        chunk = x[first:first + HASH_CHUNK] + np.float32(0.0)  # (m, d); -0.0 -> 0.0
        h, t = out[first:first + len(chunk)], scratch[:len(chunk)]
        bits = np.ascontiguousarray(chunk.T).view(np.uint32)  # (d, m): one column after another
        h.fill(start)
        for column in bits:
            np.bitwise_xor(h, column, out=h)
            _mix(h, t)
    return out


def is_heldout(hashes: np.ndarray, fraction: float) -> np.ndarray:
    """``(n,)`` bool: the rows whose hash falls in the lowest ``fraction`` of the uint64 range."""
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def digest(hashes: np.ndarray) -> int:
    """An order-free digest of a set of rows: the sum of their hashes modulo 2^64. Two readers that
    together saw every row exactly once have digests that add up to the whole set's."""
    return int(hashes.sum(dtype=np.uint64)) if len(hashes) else 0


@dataclass(frozen=True)
class Split:
    """How rows are split: the expected held-out share and the hash seed."""

    heldout_fraction: float
    seed: int = 0

    def of(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hashes (n,) uint64, heldout (n,) bool)`` of the rows ``x`` ``(n, d)``."""
        h = row_hash(x, self.seed)
        return h, is_heldout(h, self.heldout_fraction)


def split_indices(x: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` row indices of the in-memory rows ``x`` ``(n, d)`` by :class:`Split`; a
    ``DataError`` if either side has fewer than ``MIN_ROWS`` rows."""
    _, heldout = Split(fraction, seed).of(x)
    train, held = np.flatnonzero(~heldout), np.flatnonzero(heldout)
    require_rows(len(train), len(held), fraction)
    return train, held


def require_rows(train: int, heldout: int, fraction: float, purpose: str = "split") -> None:
    """A ``DataError`` unless both sides of a split have at least ``MIN_ROWS`` rows."""
    if min(train, heldout) < MIN_ROWS:
        raise DataError(f"{train + heldout} rows are too few to {purpose} with {fraction:.0%} held out (need at "
                        f"least {MIN_ROWS} in each split, got {train} and {heldout})")
