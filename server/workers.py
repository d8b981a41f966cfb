"""`tensorwire serve --workers N`: N server processes sharing one port through SO_REUSEPORT, supervised.

One Python process is bounded by its GIL, so throughput on several cores needs several processes.
The parent reserves the port (a bound, non-listening SO_REUSEPORT socket, as grpc's multiprocessing
example does), starts N workers from a fork server that has only imported the modules (no gRPC or ONNX
Runtime object crosses a fork), and forwards SIGTERM/SIGINT so they all drain together. The kernel balances
per connection: one client channel lands on one worker; statistics and batchers are per worker.

A worker that dies is replaced, as gunicorn's and uvicorn's supervisors do, while the others keep
serving; replacements start from the repository as configured at start (the same settings; explicit
model control, whose loads would not reach every worker, is refused with workers). Restarts back off
(``BACKOFF_S`` doubling up to ``MAX_BACKOFF_S``), and more than ``CRASH_LOOP_LIMIT`` deaths within
``CRASH_LOOP_WINDOW_S`` stop the server with a message: a worker that cannot stay up is a bug to see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from tensorwire.server.affinity import share_for_worker, usable_cpus
from tensorwire.server.logs import event
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.workers")
STARTUP_TIMEOUT_S = 300.0
BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0
CRASH_LOOP_LIMIT = 5
CRASH_LOOP_WINDOW_S = 60.0


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (without listening) a SO_REUSEPORT socket so the port stays ours while workers bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


WorkerMain = Callable[[ServerSettings, int], None]  # runs one worker process: (its settings, its index)


def worker_metrics(tmp: Path, index: int) -> dict:
    """A worker's metrics settings: its own endpoint on a free loopback port, which the parent's endpoint
    (tensorwire.server.metrics.WorkerAggregate) reads and sums; the operator sees only the parent's."""
    return {"metrics_address": "127.0.0.1", "metrics_port": 0, "metrics_port_file": tmp / f"worker-{index}.metrics"}


def worker_context(worker_main: WorkerMain) -> multiprocessing.context.BaseContext:
    """Workers fork from a fork server that has imported the worker's module (and ONNX Runtime) and nothing
    more: no gRPC server, channel or ONNX Runtime session exists there, so none crosses a fork (the reason
    spawn was used), while a replacement skips about a second of imports (bench/results/resilience/)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([worker_main.__module__, "onnxruntime", "numpy"])
    return ctx


@dataclasses.dataclass
class _Slot:
    """One worker position: its settings and the process that fills it now."""

    index: int
    settings: ServerSettings
    process: multiprocessing.Process | None = None
    restarts: int = 0


class Supervisor:
    """Starts the workers, replaces those that die, and stops them all on request."""

    def __init__(self, settings: ServerSettings, port: int, tmp: Path, worker_main: WorkerMain) -> None:
        self.settings = settings
        self.worker_main = worker_main
        self.ctx = worker_context(worker_main)
        n = settings.workers
        shared = len(settings.cpu_affinity) < n  # no CPUs of its own: a part of what all may use
        self.slots = [_Slot(i, dataclasses.replace(
            settings, grpc_port=port, reuse_port=True, workers=1,
            cpu_affinity=share_for_worker(settings.cpu_affinity, i, n),
            session_cpus=max(1, (len(settings.cpu_affinity) or usable_cpus()) // n) if shared else 0,
            port_file=tmp / f"worker-{i}.port", http_port_file=None, **worker_metrics(tmp, i))) for i in range(n)]
        self.deaths: deque[float] = deque()
        self.crash_loop = False

    def start(self, slot: _Slot) -> None:
        slot.settings.port_file.unlink(missing_ok=True)
        slot.process = self.ctx.Process(target=self.worker_main, args=(slot.settings, slot.index),
                                        name=f"tensorwire-worker-{slot.index}")
        slot.process.start()
        event(log, "worker_started", "worker %d started (pid %d)%s", slot.index, slot.process.pid,
              f", replacement {slot.restarts}" if slot.restarts else "", worker=slot.index, pid=slot.process.pid,
              replacement=slot.restarts)

    def wait_started(self, stop: threading.Event) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(s.settings.port_file.exists() for s in self.slots):
            if stop.is_set() or any(not s.process.is_alive() for s in self.slots) or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def replace_dead(self, stop: threading.Event) -> bool:
        """Replace every worker that died; False once deaths come faster than the crash-loop limit."""
        for slot in self.slots:
            if slot.process.is_alive() or stop.is_set():
                continue
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and now - self.deaths[0] > CRASH_LOOP_WINDOW_S:
                self.deaths.popleft()
            event(log, "worker_exited", "worker %d (pid %d) exited with %s", slot.index, slot.process.pid,
                  slot.process.exitcode, level=logging.ERROR, worker=slot.index, pid=slot.process.pid,
                  code=slot.process.exitcode)
            if len(self.deaths) > CRASH_LOOP_LIMIT:
                log.error("%d worker exits within %.0f s: a crash loop; stopping the server", len(self.deaths),
                          CRASH_LOOP_WINDOW_S)
                self.crash_loop = True
                return False
            backoff = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (len(self.deaths) - 1))
            if stop.wait(backoff):
                return True
            slot.restarts += 1
            self.start(slot)
        return True

    def stop_all(self) -> list[int | None]:
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.terminate()  # SIGTERM: each worker drains its in-flight requests
        codes = []
        for slot in self.slots:
            slot.process.join(self.settings.shutdown_grace_s + 30)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            codes.append(slot.process.exitcode)
            event(log, "worker_exited", "worker %d (pid %d) exited with %s", slot.index, slot.process.pid,
                  slot.process.exitcode, worker=slot.index, pid=slot.process.pid, code=slot.process.exitcode)
        return codes


def serve_workers(settings: ServerSettings, worker_main: WorkerMain) -> int:
    """Run ``settings.workers`` supervised server processes on one port until SIGTERM/SIGINT; 0 if all
    stopped cleanly. ``worker_main`` serves in each (the CLI passes ``tensorwire.server.app.serve_worker``:
    the supervisor knows nothing of what a worker runs)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserve_port(settings.host, settings.grpc_port))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if settings.allow_http:  # every worker serves both ports
            http_port = stack.enter_context(reserve_port(settings.http_address or settings.host, settings.http_port))
            settings = dataclasses.replace(settings, http_port=http_port)
        return _supervise(settings, port, Path(tmp), worker_main, stop)


def _supervise(settings: ServerSettings, port: int, tmp: Path, worker_main: WorkerMain,
               stop: threading.Event) -> int:
    """Start, watch and stop the workers on the reserved ports; 0 if all stopped cleanly."""
    supervisor = Supervisor(settings, port, tmp, worker_main)
    for slot in supervisor.slots:
        supervisor.start(slot)
    started = supervisor.wait_started(stop)
    metrics = None
    if started:
        from tensorwire.server.metrics import start_parent_metrics

        metrics = start_parent_metrics(settings, [s.settings.metrics_port_file for s in supervisor.slots])
        if settings.port_file:
            settings.port_file.write_text(str(port))
        if settings.allow_http and settings.http_port_file:
            settings.http_port_file.write_text(str(settings.http_port))
        pids = ", ".join(str(s.process.pid) for s in supervisor.slots)
        print(f"tensorwire: serving on {settings.host}:{port} with {settings.workers} worker processes "
              f"(pids {pids})", flush=True)
        while not stop.wait(0.1) and supervisor.replace_dead(stop):
            pass
    else:
        log.error("workers did not all start")
    codes = supervisor.stop_all()
    if metrics is not None:
        metrics.close()
    ok = started and stop.is_set() and not supervisor.crash_loop and all(c == 0 for c in codes)
    restarts = sum(s.restarts for s in supervisor.slots)
    print(f"tensorwire: workers exited with {codes} after {restarts} replacement(s)"
          + ("; stopped cleanly" if ok else ""), flush=True)
    return 0 if ok else 1
