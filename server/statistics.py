"""Per model-version counters behind the ModelStatistics RPC (Triton's definitions).

inference_count counts inferences (a batch of 8 counts 8), execution_count counts model runs; the
durations are cumulative nanoseconds per phase, and batch_stats groups them by executed batch size.
"""

from __future__ import annotations

import threading
import time
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


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Nanosecond timings of one request's phases (made once, by the model that served it)."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


class ModelStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
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

    def record_success(self, batch_size: int, total_ns: int, t: RequestTimes) -> None:
        """One request answered (its inferences ran in one execution of ``batch_size``)."""
        with self._lock:
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
            b = self.batches.setdefault(max(batch_size, 1), _BatchStats())
            b.compute_input.add(t.compute_input_ns)
            b.compute_infer.add(t.compute_infer_ns)
            b.compute_output.add(t.compute_output_ns)

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self.fail.add(total_ns)

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
