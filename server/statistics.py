"""Per model-version counters behind the ModelStatistics RPC (Triton's definitions).

inference_count counts inferences (a batch of 8 counts 8), execution_count counts model runs; the
durations are cumulative nanoseconds per phase, and batch_stats groups them by executed batch size.
The same counters feed the Prometheus endpoint (tensorwire.server.metrics reads them at scrape time, so
a request costs no metric-library call); with ``histograms`` on, each request also lands in the latency
and batch-size buckets below, which the counters alone cannot give (docs/operations.md names them).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from tensorwire import proto as pb


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class _BatchStats:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


# Upper bounds of the latency histograms in microseconds (+Inf is implied): 100 us to 10 s, roughly 1-2.5-5.
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
                      1_000_000, 2_500_000, 5_000_000, 10_000_000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Triton's nv_inference_request_failure reasons.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


class Buckets:
    """A histogram's per-bucket counts (not cumulative; the last is +Inf) and its sum; callers hold a lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0

    def add(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[int], int]:
        return list(self.counts), self.total


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Nanosecond timings of one request's phases (made once, by the model that served it)."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


class ModelStatistics:
    def __init__(self, histograms: bool = False) -> None:
        self._lock = threading.Lock()
        self.histograms = histograms
        self.pending = 0  # requests inside Model.infer: Triton's pending count, and what a drain waits for
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.request_us = Buckets(LATENCY_BUCKETS_US)
        self.queue_us = Buckets(LATENCY_BUCKETS_US)
        self.compute_us = Buckets(LATENCY_BUCKETS_US)
        self.batch_sizes = Buckets(BATCH_BUCKETS)
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self.batches: dict[int, _BatchStats] = {}

    def begin(self) -> None:
        """A request entered the model; ``record_success`` or ``record_failure`` ends it."""
        with self._lock:
            self.pending += 1

    def abandon(self) -> None:
        """A request that entered this (retired) model went to its successor: it ends here uncounted."""
        with self._lock:
            self.pending -= 1

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is inside the model (a drain); False if some still were at the timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def record_success(self, batch_size: int, total_ns: int, t: RequestTimes) -> None:
        """One request answered (its inferences ran in one execution of ``batch_size``)."""
        with self._lock:
            self.pending -= 1
            if self.histograms:
                self.request_us.add(total_ns // 1000)
                self.queue_us.add(t.queue_ns // 1000)
                self.compute_us.add((t.compute_input_ns + t.compute_infer_ns + t.compute_output_ns) // 1000)
            self.last_inference_ms = int(time.time() * 1000)
            self.inference_count += max(batch_size, 1)
            self.success.add(total_ns)
            self.queue.add(t.queue_ns)
            self.compute_input.add(t.compute_input_ns)
            self.compute_infer.add(t.compute_infer_ns)
            self.compute_output.add(t.compute_output_ns)

    def record_execution(self, batch_size: int, t: RequestTimes) -> None:
        """One run of the model on a batch of ``batch_size`` (one request, or several batched)."""
        with self._lock:
            self.execution_count += 1
            size = max(batch_size, 1)
            if self.histograms:
                self.batch_sizes.add(size)
            b = self.batches.get(size)
            if b is None:  # not setdefault: that would build the stats object on every execution
                b = self.batches[size] = _BatchStats()
            b.compute_input.add(t.compute_input_ns)
            b.compute_infer.add(t.compute_infer_ns)
            b.compute_output.add(t.compute_output_ns)

    def record_failure(self, total_ns: int, reason: str = "OTHER") -> None:
        """One request failed; ``reason`` is one of Triton's FAILURE_REASONS."""
        with self._lock:
            self.pending -= 1
            self.fail.add(total_ns)
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def snapshot(self) -> dict:
        """A consistent copy of what the metrics endpoint shows, taken under the lock."""
        with self._lock:
            return {
                "success": self.success.count, "success_ns": self.success.ns, "fail_ns": self.fail.ns,
                "failures": dict(self.failures), "inference_count": self.inference_count,
                "execution_count": self.execution_count, "pending": self.pending,
                "queue_ns": self.queue.ns, "compute_input_ns": self.compute_input.ns,
                "compute_infer_ns": self.compute_infer.ns, "compute_output_ns": self.compute_output.ns,
                "request_us": self.request_us.snapshot(), "queue_us": self.queue_us.snapshot(),
                "compute_us": self.compute_us.snapshot(), "batch_sizes": self.batch_sizes.snapshot(),
            }

    def to_proto(self, name: str, version: str):
        def d(x: _Duration):
            return pb.StatisticDuration(count=x.count, ns=x.ns)

        with self._lock:
            msg = pb.ModelStatistics(
                name=name,
                version=version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
            )
            s = msg.inference_stats
            for attr in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                getattr(s, attr).CopyFrom(d(getattr(self, attr)))
            for size in sorted(self.batches):
                b = self.batches[size]
                msg.batch_stats.add(
                    batch_size=size,
                    compute_input=d(b.compute_input),
                    compute_infer=d(b.compute_infer),
                    compute_output=d(b.compute_output),
                )
        return msg
