"""How many intra-op threads a small CPU model gets: measured at load time, one thread against ORT's pool.

ONNX Runtime's default pool (one thread per core) pays off for large operators. For a model that runs
in tens of microseconds, the pool thread costs more than it brings: it must be woken for every run,
and it spins after each one on a core that gRPC needs to receive the next request and send this
answer. Measured on 2 cores (bench/results/decisions/hot-path.md): the 3x224x224 ReduceMean model runs
faster on one thread and picks it; the 512-1024-1024-10 MLP is faster on two and keeps them.

So when nothing fixes the count (no ``--intra-op-threads``, no ``intra_op_thread_count`` parameter),
one instance would get more than one thread and the model is fast (its median run under
``SMALL_MODEL_S``), the loader times both on a warm-up input, interleaved, and keeps the faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from tensorwire.server.model_config import ModelSpec

# Above this median run time, the pool's per-run cost is noise next to the work: keep the pool.
SMALL_MODEL_S = 0.002
# Time spent measuring each candidate, at most.
BUDGET_S = 0.1
ROUNDS = 5


def warmup_feeds(spec: ModelSpec, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Inputs to time the model on: the shapes of the config's first ``model_warmup``, else ``batch`` and
    the configured dims. None when a dim is dynamic and no warm-up says its size, or an input is not numeric
    (a made-up size or string would not be a fair test)."""
    rng = np.random.default_rng(seed)
    warmup = spec.config.model_warmup[0] if spec.config.model_warmup else None
    feeds = {}
    for t in spec.inputs:
        if t.datatype.numpy is None or t.datatype.name in ("BYTES", "BOOL"):
            return None
        if warmup is not None and t.name in warmup.inputs:
            dims = tuple(warmup.inputs[t.name].dims)
            rows = max(warmup.batch_size, 1)
        else:
            dims, rows = t.dims, batch
        if any(d < 0 for d in dims):
            return None
        shape = ((rows,) + dims) if spec.max_batch_size > 0 else dims
        dtype = t.datatype.numpy
        # Integers are zeros: a valid index for embeddings and gathers whatever their size.
        feeds[t.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                         else np.zeros(shape, dtype))
    return feeds


def _median_run_s(run: Callable[[], object], deadline: float, max_runs: int = 400) -> float:
    times = []
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def faster_thread_count(pool, single, feeds: dict[str, np.ndarray], pool_threads: int,
                        median_of: Callable[..., float] = _median_run_s) -> tuple[int, str]:
    """``(threads, why)``: 1 if ``single`` (a one-thread session) beats ``pool`` on ``feeds``, else
    ``pool_threads``. Rounds alternate between the two so drift on a busy machine hits both.
    ``median_of(run, deadline[, max_runs])`` times ``run``."""
    first = median_of(lambda: pool.run(None, feeds), time.perf_counter() + BUDGET_S / ROUNDS, 50)
    if first >= SMALL_MODEL_S:
        return pool_threads, f"{first * 1e3:.1f} ms per run: large enough for the pool"
    medians: dict[str, list[float]] = {"pool": [], "single": []}
    for _ in range(ROUNDS):
        for key, session in (("pool", pool), ("single", single)):
            deadline = time.perf_counter() + BUDGET_S / ROUNDS
            medians[key].append(median_of(lambda s=session: s.run(None, feeds), deadline))
    p, s = statistics.median(medians["pool"]), statistics.median(medians["single"])
    why = f"1 thread {s * 1e6:.0f} us vs {pool_threads} threads {p * 1e6:.0f} us per run"
    return (1, why) if s < p else (pool_threads, why)
