"""What a flood on the metrics port costs gRPC: part of `tensorwire bench resilience`.

Two cases against a fresh server (1 worker, then ``--workers 2``), while a well-behaved client calls
ServerLive in a loop on its own channel:

- **half-sent**: 2,000 connections each send ``GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n`` (no blank line) and
  are then all closed at once; beside it the same 2,000 connections sending nothing, the floor any TCP
  server pays. Figures: ServerLive's worst case from the flood's start to the end of the window, and the
  time from the close until ServerLive is normal again (every later call within 2x the p99 before the
  flood, at least 10 ms).
- **idle**: 9,000 connections that send nothing and stay open: the server's thread count before and while
  they are held, whether a scrape gets through, and how long SIGTERM takes to stop the server.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from tensorwire.bench.procstat import status_field
from tensorwire.bench.stall import HALF_SENT_METRICS, TcpConnections, raise_open_files
from tensorwire.bench.stats import percentile_ms
from tensorwire.launcher import tensorwire_server

LIVE_PATH = "/inference.GRPCInferenceService/ServerLive"
HALF_SENT_COUNT = 2000
IDLE_COUNT = 9000
NORMAL_FLOOR_S = 0.005
WINDOW_S = 0.25


class LiveProbe:
    """ServerLive in a loop on one channel from a daemon thread while the block runs: every call as
    (start, seconds, ok); a failed call is followed by a 0.1 s pause, so a server that is gone costs little."""

    def __init__(self, address: str) -> None:
        self.calls: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(address)
        self._live = self._channel.unary_unary(LIVE_PATH)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveProbe:
        self._live(b"", timeout=30)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self._live(b"", timeout=30)
                ok = True
            except grpc.RpcError:
                ok = False
            self.calls.append((t0, time.monotonic() - t0, ok))
            self._stop.wait(0.002 if ok else 0.1)


def time_to_normal(calls: list[tuple[float, float, bool]], since: float, normal_s: float) -> float:
    """Seconds from ``since`` to the end of the last ``WINDOW_S`` window after it in which a call failed or
    the median call took over ``normal_s`` (0 when none did). A median, so that one call slowed by other
    work on a shared machine does not count as the server not being normal."""
    windows: dict[int, list[tuple[float, bool]]] = {}
    for t, d, ok in calls:
        if t >= since:
            windows.setdefault(int((t - since) / WINDOW_S), []).append((d, ok))
    slow = [i for i, w in windows.items()
            if not all(ok for _, ok in w) or sorted(d for d, _ in w)[len(w) // 2] > normal_s]
    return (max(slow) + 1) * WINDOW_S if slow else 0.0


def _scrape_ok(url: str) -> bool:
    """Whether one scrape answers with Triton's per-model counters."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return b"nv_inference_request_success{" in resp.read()
    except OSError:
        return False


def half_sent(repo: Path, server_args: list[str], workers: int, send: bytes, settle_s: float = 10.0) -> dict:
    """One flood of ``HALF_SENT_COUNT`` connections sending ``send``, all closed at once, against a fresh
    server; ServerLive measured before, during and for ``settle_s`` after."""
    with tensorwire_server(repo, "--workers", str(workers), *server_args) as server:
        _scrape_ok(server.metrics_url)
        with LiveProbe(server.address) as probe:
            time.sleep(2.0)
            start = time.monotonic()
            flood = TcpConnections(server.metrics_port, HALF_SENT_COUNT, send)
            refused = flood.failed + flood.server_closed()
            closed = time.monotonic()
            flood.close()
            time.sleep(settle_s)
        calls = probe.calls
        page_ok = _scrape_ok(server.metrics_url)
    before = [d for t, d, ok in calls if t < start and ok]
    normal_s = max(2 * percentile_ms(before, 50) / 1e3, NORMAL_FLOOR_S)
    during = [d for t, d, _ in calls if t + d >= start]
    return {"workers": workers, "sent": send.decode(), "connections": HALF_SENT_COUNT,
            "refused_or_reset": refused, "open_s": closed - start,
            "live_p50_before_ms": percentile_ms(before, 50),
            "live_p99_before_ms": percentile_ms(before, 99), "live_calls_after_start": len(during),
            "live_failures": sum(not ok for _, _, ok in calls), "live_worst_ms": max(during, default=0.0) * 1e3,
            "normal_ms": normal_s * 1e3, "normal_after_close_s": time_to_normal(calls, closed, normal_s),
            "page_ok_after": page_ok}


def idle(repo: Path, server_args: list[str], workers: int, hold_s: float = 0.5) -> dict:
    """``IDLE_COUNT`` idle connections held against a fresh server: threads before and while held, a scrape
    and ServerLive while held, then SIGTERM with them still open. Measured at once: the server closes those
    it holds after its header timeout (5 s)."""
    with tensorwire_server(repo, "--workers", str(workers), *server_args) as server:
        pid = server.process.pid
        _scrape_ok(server.metrics_url)  # the page builder's thread exists from the first scrape on
        with LiveProbe(server.address) as probe:  # a gRPC handler thread exists from its first call on
            time.sleep(0.5)
            threads_before = status_field(pid, "Threads")
            t0 = time.monotonic()
            flood = TcpConnections(server.metrics_port, IDLE_COUNT)
            open_s = time.monotonic() - t0
            time.sleep(hold_s)
            threads_held = status_field(pid, "Threads")
            refused = flood.failed + flood.server_closed()
            scrape_ok = _scrape_ok(server.metrics_url)
        calls = probe.calls
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=120)
        stop_s = time.monotonic() - t0
        flood.close()
    return {"workers": workers, "connections": IDLE_COUNT, "open_s": open_s, "refused_or_reset": refused,
            "threads_before": threads_before, "threads_held": threads_held, "scrape_while_held": scrape_ok,
            "live_failures": sum(not ok for _, _, ok in calls),
            "live_worst_ms": max((d for _, d, _ in calls), default=0.0) * 1e3,
            "sigterm_exit_s": stop_s, "exit_code": code}


def run_cases(repo: Path, server_args: list[str]) -> dict:
    """Every case, 1 worker and 2, printed as it ends."""
    limit = raise_open_files(IDLE_COUNT + 1024)
    if limit < IDLE_COUNT + 100:
        raise SystemExit(f"the idle case needs {IDLE_COUNT + 100} open files, `ulimit -n` allows {limit}")
    out: dict = {"half_sent": [], "idle": []}
    for workers in (1, 2):
        for send in (HALF_SENT_METRICS, b""):
            out["half_sent"].append(half_sent(repo, server_args, workers, send))
            print(out["half_sent"][-1], flush=True)
        out["idle"].append(idle(repo, server_args, workers))
        print(out["idle"][-1], flush=True)
    return out


def markdown(result: dict) -> str:
    lines = [f"Metrics port, {HALF_SENT_COUNT:,} connections closed at once (ServerLive on another channel):", "",
             "| workers | each connection sent | already closed by the server | ServerLive p50 / p99 before ms | "
             "worst ms from the flood's start | failures | normal again after the close (median within ms) | "
             "page correct after |",
             "|---" * 8 + "|"]
    for r in result["half_sent"]:
        sent = "`GET /metrics` head without its end" if r["sent"] else "nothing"
        lines.append(f"| {r['workers']} | {sent} | {r['refused_or_reset']} | {r['live_p50_before_ms']:.2f} / "
                     f"{r['live_p99_before_ms']:.2f} | "
                     f"{r['live_worst_ms']:.1f} | {r['live_failures']} | {r['normal_after_close_s']:.2f} s "
                     f"({r['normal_ms']:.1f}) | {'yes' if r['page_ok_after'] else 'NO'} |")
    lines += ["", f"Metrics port, {IDLE_COUNT:,} idle connections held:", "",
              "| workers | opened in | already closed by the server | server threads before / held | "
              "scrape while held | ServerLive worst ms / failures | SIGTERM to exit | exit code |", "|---" * 8 + "|"]
    for r in result["idle"]:
        lines.append(f"| {r['workers']} | {r['open_s']:.1f} s | {r['refused_or_reset']} | "
                     f"{r['threads_before']} / {r['threads_held']} | {'yes' if r['scrape_while_held'] else 'no'} | "
                     f"{r['live_worst_ms']:.1f} / {r['live_failures']} | {r['sigterm_exit_s']:.2f} s | "
                     f"{r['exit_code']} |")
    return "\n".join(lines)
