"""Concurrent clients for resilience tests: N threads, each with its own tritonclient channel, sending
add_sub requests in a bounded loop and keeping every failure and every wrong answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MAX_REQUESTS_PER_CLIENT = 20_000  # a bound on each loop, far above what a test needs
REQUEST_TIMEOUT_S = 60.0  # generous: a 2-core machine shared with other work


def add_sub_inputs(value: float) -> list:
    a = np.full((1, 16), value, np.float32)
    ins = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for t in ins:
        t.set_data_from_numpy(a)
    return ins


class Clients:
    """``n`` clients of ``model`` until ``stop()``; ``offsets`` collects which add_sub offset answered
    (OUTPUT0 = 2 * value + offset), ``failures`` every error and wrong answer."""

    def __init__(self, address: str, n: int = 8, model: str = "add_sub",
                 offsets_allowed: Callable[[float], bool] = lambda offset: True) -> None:
        self.address, self.model, self.allowed = address, model, offsets_allowed
        self.failures: list[str] = []
        self.counts = [0] * n
        self.offsets: set[float] = set()
        self.last_offset: list[float | None] = [None] * n
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, i: int) -> None:
        client = grpcclient.InferenceServerClient(self.address)
        try:
            for k in range(MAX_REQUESTS_PER_CLIENT):
                if self._stop.is_set():
                    return
                value = float(k % 7)
                try:
                    out = client.infer(self.model, add_sub_inputs(value), client_timeout=REQUEST_TIMEOUT_S)
                    offset = float(out.as_numpy("OUTPUT0")[0, 0]) - 2 * value
                    diff = out.as_numpy("OUTPUT1")
                    if not self.allowed(offset) or not np.all(diff == 0):
                        self._fail(f"client {i}: wrong answer: offset {offset}")
                    with self._lock:
                        self.offsets.add(offset)
                        self.last_offset[i] = offset
                except InferenceServerException as exc:
                    self._fail(f"client {i}: {exc.status()}: {exc.message()}")
                self.counts[i] += 1
        finally:
            client.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def wait_for_requests(self, more: int, timeout_s: float = 120.0) -> None:
        """Block until every client has sent ``more`` requests beyond what it had sent so far."""
        target = [c + more for c in self.counts]
        deadline = time.monotonic() + timeout_s
        while any(c < t for c, t in zip(self.counts, target)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients did not progress: {self.counts} < {target}; failures {self.failures[:5]}")
            if not any(t.is_alive() for t in self._threads):
                raise RuntimeError(f"every client stopped: {self.counts}; failures {self.failures[:5]}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 10)

    @property
    def total(self) -> int:
        return sum(self.counts)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> float:
    """Poll ``condition`` until true; the seconds it took. A generous timeout, never a timed assertion."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not seen within {timeout_s}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape of a metrics endpoint: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# Server flags for tests that read the metrics page as events: rebuilt on every scrape, never a second old.
LIVE_METRICS = ("--metrics-interval-ms", "0")


def wait_for_pending(server, model: str, count: int, version: str = "1") -> None:
    """Until ``count`` requests of ``model`` wait or run in the server (Triton's pending-request gauge): an
    event to order a test by, instead of a sleep. The server must run with LIVE_METRICS."""
    wait_until(lambda: sample(scrape(server.metrics_url), "nv_inference_pending_request_count", model=model,
                              version=version) >= count, f"{count} request(s) of {model} pending")


def random_tensor(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values of a KServe ``datatype``: BYTES as UTF-8 tokens (one non-ASCII), BOOL, floats from a
    normal, integers over their whole range."""
    if datatype == "BYTES":
        return np.array([f"tok-{i}-é".encode() for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
             "INT8": np.int8, "UINT8": np.uint8}[datatype]
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
