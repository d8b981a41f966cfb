"""Assemble and run the server: gRPC, the inference service, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError
from tensorwire.fastpath import load_codec
from tensorwire.server.affinity import pin_process
from tensorwire.server.allocator import keep_large_blocks
from tensorwire.server.grpc_service import InferenceServicer
from tensorwire.server.logs import configure_logging, event
from tensorwire.server.operations import Operations
from tensorwire.server.repository import ModelRepository
from tensorwire.server.security import interceptors, loopback_only, server_credentials
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.server")
# grpc.health.v1 service that is SERVING while the process runs, whatever its models do: Kubernetes'
# liveness probe (deploy/), which must not restart a pod because one model failed to load.
LIVENESS_SERVICE = "tensorwire.live"


def _add_to_pool(file_descriptor) -> None:
    """Make a service's file known to our private pool so reflection can describe it."""
    try:
        pb.POOL.FindFileByName(file_descriptor.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pb.POOL.Add(proto)


def grpc_options(s: ServerSettings) -> list[tuple[str, int]]:
    """grpcio channel arguments for the server's message, connection and keepalive settings."""
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", s.grpc_keepalive_time),
        ("grpc.keepalive_timeout_ms", s.grpc_keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", int(s.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", s.grpc_http2_max_pings_without_data),
        ("grpc.http2.min_ping_interval_without_data_ms", s.grpc_http2_min_recv_ping_interval_without_data),
        ("grpc.http2.max_ping_strikes", s.grpc_http2_max_ping_strikes),
    ]
    for key, value in (("grpc.max_connection_age_ms", s.grpc_max_connection_age),
                       ("grpc.max_connection_age_grace_ms", s.grpc_max_connection_age_grace),
                       ("grpc.max_connection_idle_ms", s.grpc_max_connection_idle)):
        if value > 0:
            options.append((key, value))
    return options


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


class TensorwireServer:
    """A started server; ``stop()`` drains it. ``port`` is the bound port (useful with port 0)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.codec = load_codec(settings.fastpath)
        self.repository = ModelRepository(settings)
        self.servicer = InferenceServicer(self.repository, self.codec)
        self.health = health.HealthServicer()
        self.ops = Operations(settings, self.repository)  # metrics endpoint, repository polling
        self._grpc: grpc.Server | None = None
        self.port = 0

    def start(self) -> TensorwireServer:
        s = self.settings
        if s.cpu_affinity:  # first, so that every thread started below inherits it
            pin_process(s.cpu_affinity)
        log.info("fastpath codec: %s", "Cython extension" if self.codec.name == "ext" else "pure-Python twin")
        if s.malloc_tuning:
            tuned = keep_large_blocks()
            log.info("malloc: %s", "large blocks kept for reuse" if tuned else "not tuned (not glibc)")
        self.ops.before_load()
        self.repository.load_all()
        self._check_startup_loads()
        server = self._grpc_server()
        self.port = self._listen(server)
        server.start()
        self._grpc = server
        self.servicer.started.set()
        self.refresh_health()
        if s.port_file:
            s.port_file.write_text(str(self.port))
        self.ops.after_listen()
        return self

    def _check_startup_loads(self) -> None:
        """Mode none cannot load a model later, so a failure at start stops the server (Triton's
        --exit-on-error) unless --no-exit-on-error says to serve the others."""
        failed = self.repository.startup_failures
        if failed and self.settings.model_control_mode != "explicit" and self.settings.exit_on_error:
            self.repository.close()
            self.ops.close()
            raise ModelLoadError(f"model(s) {', '.join(failed)} failed to load at start (reasons above); "
                                 "fix the repository, or pass --no-exit-on-error to serve the other models")

    def _grpc_server(self) -> grpc.Server:
        s = self.settings
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.handler_thread_count, thread_name_prefix="tensorwire-rpc"),
            options=grpc_options(s),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            interceptors=interceptors(s),
        )
        server.add_generic_rpc_handlers((self.servicer.generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        _add_to_pool(health_pb2.DESCRIPTOR)
        reflection.enable_server_reflection(
            [pb.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
            pool=pb.POOL,
        )
        return server

    def _listen(self, server: grpc.Server) -> int:
        s = self.settings
        address = f"{s.host}:{s.grpc_port}"
        port = server.add_secure_port(address, server_credentials(s)) if s.tls else server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        if not s.tls and not loopback_only(s.host) and s.model_control_mode != "none":
            log.warning("plaintext gRPC on %s is reachable beyond loopback with --model-control-mode %s: anyone "
                        "who can reach port %d can load and unload models (docs/security.md)",
                        s.host, s.model_control_mode, port)
        log.info("listening on %s:%d (%s)", s.host, port,
                 "mutual TLS" if s.grpc_use_ssl_mutual else "TLS" if s.tls else "plaintext")
        return port

    def refresh_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.servicer.is_ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", status)
        self.health.set(pb.SERVICE_NAME, status)
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> ShutdownReport:
        """Refuse new RPCs, let those in flight finish (up to ``grace`` seconds), then close; say how it went."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.ops.stop()
        self.servicer.draining.set()
        self.health.enter_graceful_shutdown()
        started, finished = self.servicer.in_flight.snapshot()
        if self._grpc is not None:
            self._grpc.stop(grace).wait(grace + 5)
            self._grpc = None
        still_started, still_finished = self.servicer.in_flight.snapshot()
        cut = still_started - still_finished  # grpc cancelled these when the grace ran out
        self.repository.close()
        self.servicer.regions.close()
        self.ops.close()
        return ShutdownReport(in_flight=started - finished, cut=cut, grace_s=grace)

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()


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
    models = ", ".join(server.servicer.ready_models()) or "none"
    if not quiet:
        print(f"tensorwire: serving {pb.SERVICE_NAME} on {settings.host}:{server.port} "
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
