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


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """One percentile (0..100) in ms; NaN for an empty list, so tables show a gap rather than crash."""
    a = np.asarray(latencies_s, dtype=np.float64)
    return float(np.percentile(a, q) * 1e3) if a.size else float("nan")


def summarize_tail(latencies_s: Sequence[float]) -> dict[str, float]:
    """``summarize`` plus the tail a load test needs (p99.9, max) and the spread (std)."""
    out = summarize(latencies_s)
    if not out.get("count"):
        return out
    a = np.asarray(latencies_s, dtype=np.float64) * 1e3
    out.update(p999_ms=float(np.percentile(a, 99.9)), max_ms=float(a.max()), std_ms=float(a.std()))
    return out


def cdf_points(latencies_s: Sequence[float], points: int = 200) -> dict[str, list[float]]:
    """A down-sampled empirical CDF (ms, fraction) small enough to keep in JSON and plot later."""
    a = np.sort(np.asarray(latencies_s, dtype=np.float64)) * 1e3
    if a.size == 0:
        return {"ms": [], "fraction": []}
    q = np.unique(np.concatenate([np.linspace(0.0, 1.0, points), [0.9, 0.99, 0.999]]))
    idx = np.minimum((q * (a.size - 1)).round().astype(int), a.size - 1)
    return {"ms": [float(v) for v in a[idx]], "fraction": [float((i + 1) / a.size) for i in idx]}
