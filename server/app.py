"""Assemble and run the server: the data plane, its transports, graceful shutdown.

One :class:`~tensorwire.server.dataplane.DataPlane` per process owns every operation; the transports are
thin over it: the gRPC front end (``--grpc-frontend``: the serving loop on grpcio's C-core, ``grpc_core.py``,
or grpcio's own server, ``grpc_service.py``), the HTTP/REST front end (``http_service.py``) and the
background services (metrics endpoint, repository polling).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

import grpc

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError
from tensorwire.fastpath import load_codec
from tensorwire.server.affinity import pin_process
from tensorwire.server.allocator import keep_large_blocks
from tensorwire.server.background import BackgroundServices
from tensorwire.server.dataplane import DataPlane
from tensorwire.server.grpc_core import CoreFrontend, missing_pieces
from tensorwire.server.grpc_service import GrpcioFrontend
from tensorwire.server.logs import configure_logging, event
from tensorwire.server.repository import ModelRepository
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.settings import ServerSettings
from tensorwire.server.shared_memory import SharedMemoryRegistry

# How long the transports keep reading after the last request was served, so its answer reaches the client.
ANSWER_FLUSH_S = 0.5
log = logging.getLogger("tensorwire.server")


@dataclass(frozen=True)
class ShutdownReport:
    """What a graceful stop did to the inference requests in flight when it began."""

    in_flight: int
    cut: int
    grace_s: float

    def line(self) -> str:
        if self.cut == 0:
            return f"tensorwire: stopped cleanly ({self.in_flight} request(s) in flight at the stop, all completed)"
        return (f"tensorwire: stopped; of {self.in_flight} request(s) in flight at the stop, "
                f"{max(self.in_flight - self.cut, 0)} completed and {self.cut} were cut by the "
                f"{self.grace_s:g} s grace (--shutdown-grace)")


def grpc_frontend(plane: DataPlane) -> CoreFrontend | GrpcioFrontend:
    """The front end ``--grpc-frontend`` names; grpcio's own server where this grpcio lacks a piece of its
    C-core wrapper that the core loop uses (it is not grpcio's public API)."""
    if plane.settings.grpc_frontend == "core":
        missing = missing_pieces()
        if not missing:
            return CoreFrontend(plane)
        log.warning("--grpc-frontend core: grpcio %s lacks %s; serving with grpcio's own server instead",
                    grpc.__version__, ", ".join(missing))
    return GrpcioFrontend(plane)


class TensorwireServer:
    """A started server; ``stop()`` drains it. ``port`` is the bound gRPC port (useful with port 0)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.codec = load_codec(settings.fastpath)
        self.scratch = ScratchPool(settings.scratch_pool_bytes)
        self.repository = ModelRepository(settings, self.scratch)
        self.plane = DataPlane(self.repository, self.codec, SharedMemoryRegistry(settings))
        self.grpc = grpc_frontend(self.plane)
        self.http = None
        if settings.allow_http:
            from tensorwire.server.http_service import HttpFrontend

            self.http = HttpFrontend(self.plane)
        self.background = BackgroundServices(settings, self.repository, self.scratch)
        self.port = 0
        self.http_port = 0

    def start(self) -> TensorwireServer:
        s = self.settings
        if s.cpu_affinity:  # first, so that every thread started below inherits it
            pin_process(s.cpu_affinity)
        log.info("fastpath codec: %s", "Cython extension" if self.codec.name == "ext" else "pure-Python twin")
        log.info("gRPC front end: %s", self.grpc.name)
        if s.malloc_tuning:
            tuned = keep_large_blocks()
            log.info("malloc: %s", "large blocks kept for reuse" if tuned else "not tuned (not glibc)")
        self.background.before_load()
        self.repository.load_all()
        self._check_startup_loads()
        self.port = self.grpc.start()
        if self.http is not None:
            self.http_port = self.http.start()
        self.plane.started.set()
        self.refresh_health()
        if s.port_file:
            s.port_file.write_text(str(self.port))
        self.background.after_listen(self.plane.in_flight, (self.grpc.release_memory,))
        return self

    def _check_startup_loads(self) -> None:
        """Mode none cannot load a model later, so a failure at start stops the server (Triton's
        --exit-on-error) unless --no-exit-on-error says to serve the others."""
        failed = self.repository.startup_failures
        if failed and self.settings.model_control_mode != "explicit" and self.settings.exit_on_error:
            self.repository.close()
            self.background.close()
            raise ModelLoadError(f"model(s) {', '.join(failed)} failed to load at start (reasons above); "
                                 "fix the repository, or pass --no-exit-on-error to serve the other models")

    def refresh_health(self) -> None:
        self.grpc.refresh_health()

    def stop(self, grace: float | None = None) -> ShutdownReport:
        """Refuse new RPCs, let those in flight finish (up to ``grace`` seconds), then close; say how it went."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.background.stop()
        self.plane.draining.set()
        started, finished = self.plane.in_flight.snapshot()
        left = self._let_answers_out(grace)
        # What is unfinished now, when the grace is over, is cut: the transports cancel it (a queued request is
        # then answered at once, a model run goes on but its answer is dropped).
        still_started, still_finished = self.plane.in_flight.snapshot()
        if self.http is not None:  # both drain at once: each gets what is left of the grace
            stopping = threading.Thread(target=self.http.stop, args=(left,), name="tensorwire-http-stop")
            stopping.start()
            self.grpc.stop(left)
            stopping.join()
        else:
            self.grpc.stop(left)
        cut = still_started - still_finished
        self.repository.close()
        self.plane.close()
        self.background.close()
        return ShutdownReport(in_flight=started - finished, cut=cut, grace_s=grace)

    def _let_answers_out(self, grace: float) -> float:
        """Wait (within ``grace``) for the requests being served, then ANSWER_FLUSH_S more while the transports
        still read, so that their answers reach the clients; what is left of the grace. A transport closed
        while its client's frames are unread resets the connection, and the client loses an answer it was
        still receiving."""
        deadline = time.monotonic() + grace
        if self.plane.in_flight.wait_idle(grace):
            time.sleep(min(ANSWER_FLUSH_S, max(deadline - time.monotonic(), 0.0)))
        return max(deadline - time.monotonic(), 0.0)

    def wait(self) -> None:
        self.grpc.wait()


def serve(settings: ServerSettings, quiet: bool = False) -> int:
    """Run one server process until SIGTERM or SIGINT, then shut down gracefully and return 0."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = TensorwireServer(settings).start()
    models = ", ".join(server.plane.ready_models()) or "none"
    if not quiet:
        http = (f", HTTP/REST on {settings.http_address or settings.host}:{server.http_port}"
                if server.http is not None else "")
        print(f"tensorwire: serving {pb.SERVICE_NAME} on {settings.host}:{server.port}{http} "
              f"(fastpath: {server.codec.name}; models ready: {models})", flush=True)
    while not stop.wait(0.5):
        server.refresh_health()
    event(log, "server_draining", "%s received: draining (grace %.1fs)", received[0] if received else "stop",
          settings.shutdown_grace_s, signal=received[0] if received else "stop", grace_s=settings.shutdown_grace_s)
    report = server.stop()
    event(log, "server_stopped", "%s", report.line(), port=server.port, in_flight=report.in_flight, cut=report.cut)
    if not quiet:
        print(report.line(), flush=True)
    return 0


def serve_worker(settings: ServerSettings, index: int) -> None:
    """One process of ``--workers N`` (started by tensorwire.server.workers): log with its index, serve."""
    configure_logging(settings.log_format, settings.log_level, worker=index)
    raise SystemExit(serve(settings, quiet=True))
