"""`tensorwire serve --workers N`: N server processes sharing one port through SO_REUSEPORT.

One Python process is bounded by its GIL, so throughput on several cores needs several processes.
The parent reserves the port (a bound, non-listening SO_REUSEPORT socket, as grpc's multiprocessing
example does), starts N workers with the ``spawn`` method (fresh interpreters: no gRPC or ONNX Runtime
state crosses a fork), and forwards SIGTERM/SIGINT so they all drain together. The kernel balances
per connection: one client channel lands on one worker; statistics and batchers are per worker.
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
from collections.abc import Iterator
from pathlib import Path

from tensorwire.server.affinity import share_for_worker, usable_cpus
from tensorwire.server.logs import configure_logging, event
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.workers")
STARTUP_TIMEOUT_S = 300.0


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


def _worker_main(settings: ServerSettings, index: int) -> None:
    from tensorwire.server.app import serve

    configure_logging(settings.log_format, settings.log_level, worker=index)
    raise SystemExit(serve(settings, quiet=True))


def worker_metrics(settings: ServerSettings, tmp: Path, index: int) -> dict:
    """A worker's metrics settings: its own endpoint on a free loopback port, which the parent's endpoint
    (tensorwire.server.metrics.WorkerAggregate) reads and sums; the operator sees only the parent's."""
    return {"metrics_address": "127.0.0.1", "metrics_port": 0, "metrics_port_file": tmp / f"worker-{index}.metrics"}


def serve_workers(settings: ServerSettings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM/SIGINT; 0 if all stopped cleanly."""
    n = settings.workers
    ctx = multiprocessing.get_context("spawn")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with reserve_port(settings.host, settings.grpc_port) as port, tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(n):
            # Each worker's sessions get their share of the cores (unless threads were set explicitly).
            cpus = share_for_worker(settings.cpu_affinity, i, n)
            shared = len(settings.cpu_affinity) < n  # no CPUs of its own: a part of what all may use
            child = dataclasses.replace(
                settings, grpc_port=port, reuse_port=True, workers=1, cpu_affinity=cpus,
                session_cpus=max(1, (len(settings.cpu_affinity) or usable_cpus()) // n) if shared else 0,
                port_file=Path(tmp) / f"worker-{i}.port", **worker_metrics(settings, Path(tmp), i))
            p = ctx.Process(target=_worker_main, args=(child, i), name=f"tensorwire-worker-{i}")
            p.start()
            event(log, "worker_started", "worker %d started (pid %d)", i, p.pid, worker=i, pid=p.pid)
            procs.append((p, child.port_file))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(f.exists() for _, f in procs):
            if stop.is_set() or any(not p.is_alive() for p, _ in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        started = all(f.exists() for _, f in procs)
        metrics = None
        if started:
            from tensorwire.server.metrics import start_parent_metrics

            metrics = start_parent_metrics(settings, [Path(tmp) / f"worker-{i}.metrics" for i in range(n)])
            if settings.port_file:
                settings.port_file.write_text(str(port))
            print(f"tensorwire: serving on {settings.host}:{port} with {n} worker processes "
                  f"(pids {', '.join(str(p.pid) for p, _ in procs)})", flush=True)
            while not stop.wait(0.2):
                if any(not p.is_alive() for p, _ in procs):
                    log.error("a worker exited unexpectedly; stopping the others")
                    break
        else:
            log.error("workers did not all start")
        for p, _ in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker drains its in-flight requests
        codes = []
        for p, _ in procs:
            p.join(settings.shutdown_grace_s + 30)
            if p.is_alive():
                p.kill()
                p.join()
            codes.append(p.exitcode)
            event(log, "worker_exited", "worker %d (pid %d) exited with %s", len(codes) - 1, p.pid, p.exitcode,
                  worker=len(codes) - 1, pid=p.pid, code=p.exitcode)
        if metrics is not None:
            metrics.close()
    ok = started and stop.is_set() and all(c == 0 for c in codes)
    print(f"tensorwire: workers exited with {codes}" + ("; stopped cleanly" if ok else ""), flush=True)
    return 0 if ok else 1
