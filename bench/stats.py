"""Exact percentiles (nearest rank, over all samples) and number formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p % of them at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float | None, digits: int = 3) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.{digits}f}"


def signed_ms(seconds: float | None, digits: int = 3) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:+.{digits}f}"


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)
