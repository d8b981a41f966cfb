"""The Prometheus endpoint: Triton's metric names and labels, latency histograms, process metrics.

Nothing here runs on a request's path. ``ModelStatistics`` already counts every request under its lock
(and buckets it when metrics are on); :class:`ServerCollector` reads those counters when Prometheus
scrapes, through prometheus-client's custom-collector API, which also writes the exposition format.
Per-request calls into the client library would cost about a microsecond per metric per request
(bench/results/decisions/metrics.md has the on/off figures).

With ``--workers N`` each worker serves its own endpoint on a loopback port and the parent's endpoint
(:class:`WorkerAggregate`) sums theirs at scrape time: one scrape sees every worker. prometheus-client's
multiprocess mode was the other choice; it cannot carry custom collectors or per-process metrics, and
every sample would pay an mmap write (docs/operations.md, "Metrics").

The endpoint is plaintext HTTP without authentication: anyone who reaches it reads model names and
traffic. It listens on ``--metrics-address`` (default: the gRPC ``--host``), served by
:mod:`tensorwire.server.metrics_http`: one thread for all connections, bounded connections and timeouts,
and a page built at most once per ``--metrics-interval-ms`` however many ask (with ``--workers N`` that page
is the parent's sum, so the workers are read no more often).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tensorwire.errors import SettingsError
from tensorwire.server.logs import event
from tensorwire.server.metrics_http import MetricsHttpServer, PageCache
from tensorwire.server.statistics import BATCH_BUCKETS, FAILURE_REASONS, LATENCY_BUCKETS_US

if TYPE_CHECKING:
    from tensorwire.server.model import Model
    from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.metrics")

# Triton's cumulative counters: (name, help, snapshot key, divisor to microseconds or 1).
COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "success", 1),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)", "inference_count", 1),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", "execution_count", 1),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", "success_ns", 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", "queue_ns", 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     "compute_input_ns", 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_infer_ns", 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     "compute_output_ns", 1000),
)
# tensorwire's histograms (Triton has none of these): (name, help, snapshot key, bucket bounds).
HISTOGRAMS = (
    ("tensorwire_inference_request_duration_us", "End-to-end latency of successful requests in microseconds",
     "request_us", LATENCY_BUCKETS_US),
    ("tensorwire_inference_queue_duration_us", "Time successful requests waited for an instance or a batch, "
     "in microseconds", "queue_us", LATENCY_BUCKETS_US),
    ("tensorwire_inference_compute_duration_us", "Compute time (input + infer + output) of successful requests "
     "in microseconds", "compute_us", LATENCY_BUCKETS_US),
    ("tensorwire_inference_batch_size", "Rows in each model execution (batch size)", "batch_sizes", BATCH_BUCKETS),
)


def _histogram(name: str, doc: str, bounds: tuple, per_model: Iterable[tuple[dict, tuple[list[int], int]]]) -> Metric:
    metric = Metric(name, doc, "histogram")
    for labels, (counts, total) in per_model:
        cumulative = 0
        for bound, count in zip((*bounds, float("inf")), counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else str(bound)
            metric.add_sample(name + "_bucket", {**labels, "le": le}, cumulative)
        metric.add_sample(name + "_count", labels, cumulative)
        metric.add_sample(name + "_sum", labels, total)
    return metric


class ServerCollector:
    """Triton's per-model metrics, read from each loaded version's ModelStatistics at scrape time."""

    def __init__(self, models: Callable[[], list[Model]]) -> None:
        self._models = models  # the repository's loaded versions

    def collect(self) -> Iterator[Metric]:
        rows = [({"model": m.name, "version": m.version}, m.stats.snapshot()) for m in self._models()]
        for name, doc, key, div in COUNTERS:
            metric = Metric(name, doc, "counter")
            for labels, snap in rows:
                metric.add_sample(name, labels, snap[key] // div)
            yield metric
        failure = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "counter")
        for labels, snap in rows:
            for reason in FAILURE_REASONS:
                failure.add_sample("nv_inference_request_failure", {**labels, "reason": reason},
                                   snap["failures"].get(reason, 0))
        yield failure
        pending = Metric("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model", "gauge")
        for labels, snap in rows:
            pending.add_sample("nv_inference_pending_request_count", labels, snap["pending"])
        yield pending
        for name, doc, key, bounds in HISTOGRAMS:
            yield _histogram(name, doc, bounds, ((labels, snap[key]) for labels, snap in rows))


class HostCollector:
    """Triton's nv_cpu_* gauges: host CPU utilisation since the previous scrape, and host memory."""

    def __init__(self) -> None:
        self._last = _cpu_times()

    def collect(self) -> Iterator[Metric]:
        now = _cpu_times()
        (busy0, total0), (busy1, total1) = self._last, now
        self._last = now
        util = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        total, available = _memory()
        for name, doc, value in (
            ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", util),
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", total),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", total - available),
        ):
            metric = Metric(name, doc, "gauge")
            metric.add_sample(name, {}, value)
            yield metric


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (zeros where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _memory() -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return info.get("MemTotal", 0), info.get("MemAvailable", 0)


def registry_for(collectors: Iterable) -> CollectorRegistry:
    """A registry of its own (not the library's global one) with the process metrics and ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    return registry


class MetricsEndpoint:
    """A started ``/metrics`` HTTP server; ``port`` is the bound port (useful with --metrics-port 0)."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry) -> None:
        address = settings.metrics_address or settings.host
        self.cache = PageCache(lambda: generate_latest(registry), settings.metrics_interval_ms / 1000)
        try:
            self._server = MetricsHttpServer(address, settings.metrics_port, self.cache, CONTENT_TYPE_PLAIN_0_0_4)
        except OSError as exc:
            raise SettingsError(
                f"cannot serve metrics on {address}:{settings.metrics_port} (--metrics-port "
                f"{settings.metrics_port}, --metrics-address {address}): {exc.strerror or exc}; choose a free "
                "port, 0 for any, or --allow-metrics=false") from None
        self.address, self.port = address, self._server.port
        event(log, "metrics_started", "metrics on http://%s:%d/metrics (plaintext HTTP, no authentication: "
              "anyone who can reach this port reads model names and traffic; docs/operations.md)", address,
              self.port, address=address, port=self.port)
        if settings.metrics_port_file:
            settings.metrics_port_file.write_text(str(self.port))

    def close(self) -> None:
        """Stop listening and end every metrics connection at once (nothing here holds up a drain)."""
        self._server.close()


def start_metrics(settings: ServerSettings, models: Callable[[], list[Model]]) -> MetricsEndpoint | None:
    """The endpoint for one server process (None with --allow-metrics=false)."""
    if not settings.allow_metrics:
        return None
    return MetricsEndpoint(settings, registry_for([ServerCollector(models), HostCollector()]))


class WorkerAggregate:
    """The parent's view of ``--workers N``: every worker's exposition, summed per series at scrape time.

    Counters, histograms and the pending gauge add up across workers; process metrics (process_*,
    python_*) get a ``worker`` label instead; host gauges (nv_cpu_*) are the same for all, so one is kept.
    A worker that does not answer within a second is left out of that scrape (and logged).
    """

    def __init__(self, port_files: list[Path]) -> None:
        self.port_files = port_files

    def _scrape(self, i: int, port_file: Path) -> str:
        try:
            port = int(port_file.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as resp:
                return resp.read().decode()
        except (OSError, ValueError) as exc:
            log.warning("worker %d's metrics not read: %s", i, exc)
            return ""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple, float]] = {}
        for i, port_file in enumerate(self.port_files):
            for fam in text_string_to_metric_families(self._scrape(i, port_file)):
                per_worker = fam.name.startswith(("process_", "python_"))
                host = fam.name.startswith("nv_cpu_")
                families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                series = values.setdefault(fam.name, {})
                for s in fam.samples:
                    labels = {**s.labels, "worker": str(i)} if per_worker else dict(s.labels)
                    key = (s.name, tuple(sorted(labels.items())))
                    series[key] = s.value if host else series.get(key, 0.0) + s.value
        for name, metric in families.items():
            for (sample, labels), value in values[name].items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


def start_parent_metrics(settings: ServerSettings, port_files: list[Path]) -> MetricsEndpoint | None:
    """The parent's endpoint with ``--workers N``: the sum of the workers' (None with metrics off)."""
    if not settings.allow_metrics:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerAggregate(port_files))
    return MetricsEndpoint(settings, registry)
