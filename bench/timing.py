"""The timing loop every in-process measurement shares: warm up, then iterate until the median is stable.

"Stable" here means: at least ``min_iters`` calls and at least ``min_time_s`` of calls, so a 50 us model
gets thousands of samples and a 500 ms model still gets enough for a median, within ``max_time_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoopSettings:
    warmup: int = 5
    warmup_time_s: float = 1.0
    min_iters: int = 30
    min_time_s: float = 3.0
    max_iters: int = 100_000
    max_time_s: float = 20.0

    @classmethod
    def quick(cls) -> LoopSettings:
        """Enough for CI to see real numbers, not enough to trust them."""
        return cls(warmup=2, warmup_time_s=0.0, min_iters=8, min_time_s=0.2, max_iters=2000, max_time_s=2.0)


def fixed_count(n: int, warmup: int = 20) -> LoopSettings:
    """Exactly ``n`` timed calls after ``warmup`` untimed ones (for side-by-side runs of equal size)."""
    return LoopSettings(warmup=warmup, warmup_time_s=0.0, min_iters=n, min_time_s=0.0, max_iters=n,
                        max_time_s=float("inf"))


def measure(fn: Callable[[], object], s: LoopSettings) -> list[float]:
    """Latencies in seconds of ``fn()`` after warm-up (``warmup`` calls and at least ``warmup_time_s``)."""
    t_end = time.perf_counter() + s.warmup_time_s
    n = 0
    while n < s.warmup or (time.perf_counter() < t_end and n < s.max_iters):
        fn()
        n += 1
    lat: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        elapsed = t1 - start
        if len(lat) >= s.max_iters or elapsed >= s.max_time_s:
            break
        if len(lat) >= s.min_iters and elapsed >= s.min_time_s:
            break
    return lat


def cpu_session(model: Path | bytes, intra_op_threads: int = 0, inter_op_threads: int = 0, spinning: bool = False):
    """An ONNX Runtime CPU session with the given thread counts (0: ORT's choice), for in-process figures
    next to a served model (pass the intra-op count the server reports, so both run alike) and for the
    bench's peer servers. Intra-op spinning is off unless asked, as in the server by default
    (--intra-op-spinning): with it on, a run is faster and burns more CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
