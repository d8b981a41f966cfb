"""Latency summaries used by every benchmark: percentiles in milliseconds from seconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """median/p50, p90, p99 (ms), mean (ms) and count of a list of latencies in seconds."""
    a = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"count": 0}
    return {
        "count": int(a.size),
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "min_ms": float(a.min()),
    }
