"""The metrics port cannot hurt serving: the page cache, the endpoint's HTTP rules and bounds (the real
endpoint on real sockets, in this process), and real servers flooded on their metrics port while gRPC
keeps answering. No timed assertions: the figures come from `tensorwire bench resilience --cases metrics`
(bench/results/resilience/)."""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
from clients import wait_until
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server

from tensorwire.bench.procstat import status_field
from tensorwire.bench.stall import HALF_SENT_METRICS, TcpConnections, raise_open_files
from tensorwire.client import InferenceClient
from tensorwire.server.metrics_http import HttpBounds, MetricsHttpServer, PageCache

PAGE = b"# TYPE x counter\nx_total 1.0\n"
X = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.full((1, 16), 2.0, np.float32)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_page_is_built_at_most_once_per_second():
    clock = Clock()
    cache = PageCache(lambda: f"page {cache.builds + 1}".encode(), max_age_s=1.0, clock=clock)
    assert cache.fresh() is None
    assert {cache.get() for _ in range(1000)} == {b"page 1"}
    clock.now = 0.999
    assert cache.get() == b"page 1" and cache.fresh() == b"page 1"
    clock.now = 1.0
    assert cache.fresh() is None
    assert cache.get() == b"page 2" and cache.get() == b"page 2"
    assert cache.builds == 2


def test_the_page_is_never_built_twice_at_once():
    """16 threads ask while one slow build runs: one build, and every thread gets its page."""
    gate, lock = threading.Event(), threading.Lock()
    running, peak, pages = [0], [0], []

    def build() -> bytes:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(60)
        with lock:
            running[0] -= 1
        return PAGE

    cache = PageCache(build, max_age_s=3600)
    threads = [threading.Thread(target=lambda: pages.append(cache.get())) for _ in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: running[0] == 1, "a build running", 30)
    gate.set()
    for t in threads:
        t.join(60)
    assert pages == [PAGE] * 16 and cache.builds == 1 and peak[0] == 1


def _fails_once() -> Callable[[], bytes]:
    """A page build that raises the first time and returns PAGE after."""
    outcomes = iter([RuntimeError("collector failed"), PAGE])

    def build() -> bytes:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return build


def test_a_failed_build_is_not_kept():
    cache = PageCache(_fails_once())
    with pytest.raises(RuntimeError):
        cache.get()
    assert cache.get() == PAGE and cache.builds == 1


@pytest.fixture
def endpoint():
    bounds = HttpBounds(max_connections=32, header_timeout_s=0.5, idle_timeout_s=1.0)
    server = MetricsHttpServer("127.0.0.1", 0, PageCache(lambda: PAGE), "text/plain; version=0.0.4", bounds)
    yield server
    server.close()


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_get_and_head_of_metrics_only_over_keep_alive(endpoint):
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)
    answers, sockets = [], []
    for method, path in (("GET", "/metrics"), ("GET", "/metrics?x=1"), ("HEAD", "/metrics"), ("GET", "/"),
                         ("GET", "/metrics/more"), ("POST", "/metrics")):
        conn.request(method, path)
        resp = conn.getresponse()
        answers.append((method, path, resp.status, resp.read(), resp.getheader("Content-Length"),
                        resp.getheader("Allow")))
        sockets.append(conn.sock)
    assert answers == [
        ("GET", "/metrics", 200, PAGE, str(len(PAGE)), None),
        ("GET", "/metrics?x=1", 200, PAGE, str(len(PAGE)), None),
        ("HEAD", "/metrics", 200, b"", str(len(PAGE)), None),
        ("GET", "/", 404, b"", "0", None),
        ("GET", "/metrics/more", 404, b"", "0", None),
        ("POST", "/metrics", 405, b"", "0", "GET, HEAD"),
    ]
    assert all(sock is sockets[0] for sock in sockets)  # one connection for every request: keep-alive
    assert endpoint.open_connections == 1
    conn.close()
    assert endpoint.cache.builds == 1


def test_malformed_oversized_and_http_1_0_requests_end_their_connection(endpoint):
    assert _exchange(endpoint.port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"
    assert _exchange(endpoint.port, big).startswith(b"HTTP/1.1 431 ")
    answer = _exchange(endpoint.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer and answer.endswith(PAGE)


def test_stalled_and_idle_connections_are_closed_by_the_timeouts(endpoint):
    assert _exchange(endpoint.port, HALF_SENT_METRICS) == b""  # the header timeout
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the page, then the idle timeout closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(PAGE)


def test_half_sent_requests_build_no_page_and_the_bound_holds(endpoint):
    """200 half-sent requests against a bound of 32: never more than 32 open, each newcomer ending the
    oldest silent one; a scrape during the flood gets its page; closing them all builds no page."""
    flood = TcpConnections(endpoint.port, 200, HALF_SENT_METRICS)
    wait_until(lambda: endpoint.evicted + endpoint.open_connections >= 200, "every connection seen", 30)
    assert endpoint.open_connections <= 32 and endpoint.evicted >= 168 and endpoint.refused == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=30) as resp:
        assert resp.read() == PAGE  # the scraper took the place of the oldest half-sent connection
    assert endpoint.cache.builds == 1
    flood.close()
    wait_until(lambda: endpoint.open_connections == 0, "every connection ended", 30)
    assert endpoint.cache.builds == 1  # the closed half-sent requests built nothing


def test_close_ends_every_connection_at_once(endpoint):
    flood = TcpConnections(endpoint.port, 20, HALF_SENT_METRICS)
    wait_until(lambda: endpoint.open_connections == 20, "20 connections held", 30)
    endpoint.close()
    wait_until(lambda: flood.server_closed() == 20, "every connection closed by the server", 30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5).close()
    flood.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("flood") / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent


def _check_answer(client: InferenceClient) -> None:
    out = client.infer("add_sub", X)
    np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), 3.0, np.float32))


class LiveLoop:
    """ServerLive in a loop from a daemon thread while the block runs: the calls that succeeded, how many
    failed and the first few failures (kept few: a loop against a server that is gone fails fast)."""

    def __init__(self, address: str) -> None:
        self.ok, self.failed, self.failures = 0, 0, []
        self._stop = threading.Event()
        self._client = InferenceClient(address, timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert self._client.server_live()
                self.ok += 1
            except Exception as exc:  # counted, asserted by the test
                self.failed += 1
                if len(self.failures) < 5:
                    self.failures.append(repr(exc))
                self._stop.wait(0.1)


def _page_has_triton_counters(url: str) -> bool:
    """Whether a scrape answers with Triton's counters (False when the connection is refused: until the
    server has seen a flood's connections close, the connection bound may still be full)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return b'nv_inference_request_success{model="add_sub",version="1"}' in resp.read()
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_half_sent_metrics_requests_closed_at_once_leave_grpc_answering(repo, workers):
    """2,000 connections send a metrics request head without its end and close together: ServerLive on
    another connection succeeds during and after, and the page is still right."""
    with start_server(repo, "--workers", str(workers)) as s, InferenceClient(s.address, timeout=60) as client:
        _check_answer(client)
        with LiveLoop(s.address) as live:
            wait_until(lambda: live.ok > 0, "ServerLive answering", 60)
            flood = TcpConnections(s.metrics_port, 2000, HALF_SENT_METRICS)
            flood.close()
            after = live.ok
            wait_until(lambda: live.ok >= after + 50 or live.failed, "50 ServerLive calls after the close", 120)
        assert live.failed == 0, live.failures
        _check_answer(client)
        wait_until(lambda: _page_has_triton_counters(s.metrics_url), "a correct page after the flood", 60)


def test_idle_metrics_connections_take_no_threads_and_sigterm_still_stops(repo):
    """3,000 idle connections to the metrics port: the server's thread count stays within a few of what it
    was, gRPC answers, and SIGTERM stops the server with them still open."""
    assert raise_open_files(4096) >= 4096, "raise `ulimit -n` to 4096 for this test"
    with start_server(repo) as s, InferenceClient(s.address, timeout=60) as client:
        _check_answer(client)
        assert _page_has_triton_counters(s.metrics_url)  # the page builder's thread exists from here on
        pid = s.process.pid
        before = status_field(pid, "Threads")
        flood = TcpConnections(s.metrics_port, 3000)
        peak = before
        for _ in range(20):  # a second of samples while the server takes the connections in
            peak = max(peak, status_field(pid, "Threads"))
            time.sleep(0.05)
        assert peak <= before + 2
        assert client.server_live()
        _check_answer(client)
        s.process.send_signal(signal.SIGTERM)
        assert s.process.wait(timeout=60) == 0  # the default grace is 10 s; generous beyond it
        flood.close()


def test_a_failing_page_is_answered_500_and_the_endpoint_keeps_serving():
    server = MetricsHttpServer("127.0.0.1", 0, PageCache(_fails_once()), "text/plain")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/metrics")
        first = conn.getresponse()
        assert first.status == 500 and b"RuntimeError" in first.read()
        conn.request("GET", "/metrics")
        second = conn.getresponse()
        assert second.status == 200 and second.read() == PAGE
        conn.close()
    finally:
        server.close()
