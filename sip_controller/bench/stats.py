"""Percentiles of latency samples, and medians (with spread) of per-run figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; NaN when empty."""
    if not samples:
        return math.nan
    data = sorted(samples)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (3 decimals) of nanosecond samples, plus their count."""
    ms = [s / 1e6 for s in samples_ns]
    return {
        "count": len(ms),
        "p50_ms": rounded(percentile(ms, 50)),
        "p90_ms": rounded(percentile(ms, 90)),
        "p99_ms": rounded(percentile(ms, 99)),
        "max_ms": rounded(max(ms) if ms else math.nan),
    }


def rounded(value: float, digits: int = 3) -> float:
    return value if math.isnan(value) else round(value, digits)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return float(statistics.median(clean)) if clean else math.nan


def spread(values: Sequence[float]) -> dict[str, Any]:
    """The median of several runs' figures with its spread: ``{"median", "min", "max", "runs"}``."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": list(values)}
    return {
        "median": rounded(median(clean)),
        "min": rounded(min(clean)),
        "max": rounded(max(clean)),
        "runs": [rounded(v) for v in values],
    }


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
