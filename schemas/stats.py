"""Nearest-rank percentiles: the one definition every latency figure in drivestream uses.

Nearest rank returns a value that was actually observed (the smallest sample with at least
p % of the samples at or below it), so a p99 is a real latency, not an interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def nearest_rank(values: Iterable[float], percentiles: Iterable[float]) -> list[float]:
    """Nearest-rank percentiles of ``values`` (empty input -> empty list)."""
    arr = np.sort(np.fromiter(values, dtype=np.float64))
    if arr.size == 0:
        return []
    # Rounded first so that 99.9 % of 1000 samples is rank 999, not 1000 by float error.
    ranks = [max(1, math.ceil(round(p / 100 * arr.size, 6))) for p in percentiles]
    return [float(arr[k - 1]) for k in ranks]


def percentile(values: Iterable[float], p: float) -> float | None:
    """One nearest-rank percentile, or None for no values."""
    out = nearest_rank(values, [p])
    return out[0] if out else None
