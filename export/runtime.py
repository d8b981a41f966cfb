"""ONNX Runtime sessions and latency for the export checks (CPU; the server picks its own providers)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tensorwire.export.errors import require


def session(model_or_path, level: str = "ORT_ENABLE_ALL", optimized_path: str | Path | None = None):
    """An ORT CPU session over a ModelProto or a file, at ``level`` (what the server uses by default)."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run(sess, names: list[str], arrays: list[Any]) -> list[Any]:
    return sess.run(None, dict(zip(names, arrays)))


def compare_latency_ms(sess_a, sess_b, names: list[str], arrays: list[Any], runs: int = 15,
                       budget_s: float = 6.0) -> tuple[float, float]:
    """Median latency of two sessions measured in alternation, so load from other processes hits both."""
    feeds = dict(zip(names, arrays))
    for _ in range(2):
        sess_a.run(None, feeds)
        sess_b.run(None, feeds)
    ta, tb = [], []
    deadline = time.perf_counter() + budget_s
    while len(ta) < runs and (len(ta) < 3 or time.perf_counter() < deadline):
        for sess, times in ((sess_a, ta), (sess_b, tb)):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)
