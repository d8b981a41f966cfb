"""The grpcio front end (``--grpc-frontend grpcio``): grpcio's own server over the methods of ``grpc_methods``.

Registered as one generic handler, without generated servicer classes: requests arrive as the raw bytes
grpcio received (no deserializer) and answers leave as wire bytes (no serializer), so the fastpath codec is
the only thing that touches tensor data.

Admission (``--max-concurrent-rpcs``) is the data plane's counter, taken when a handler starts and given back
when it ends, with ``HEALTH_THREADS`` spare handler threads that only health calls can use: grpcio's own
bound is set that much higher, so a server whose admitted calls are all busy (idle streams, a full batcher)
still answers ServerLive, ServerReady, ModelReady and grpc.health.v1. A unary call is counted once its
request has arrived; until then only grpcio's bound holds it (the C-core loop counts from the call's start).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorwire import proto as pb
from tensorwire.errors import RequestError
from tensorwire.server.call import Call
from tensorwire.server.dataplane import ADMISSION_REFUSED, DataPlane
from tensorwire.server.grpc_methods import (
    HEALTH_METHODS,
    SERVICE_PREFIX,
    UNARY,
    answer_infer,
    answer_stream_request,
    answer_unary,
    draining_stream_answer,
    health_statuses,
    internal_message,
    reflected_services,
)
from tensorwire.server.grpc_options import channel_options, listen
from tensorwire.server.security import interceptors

log = logging.getLogger("tensorwire.grpc")
# Handler threads beyond --max-concurrent-rpcs, for the calls admission never refuses (health).
HEALTH_THREADS = 16


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, RequestError):
        context.abort(exc.code, str(exc))
    log.exception("internal error in handler")
    context.abort(grpc.StatusCode.INTERNAL, internal_message(exc))


class GrpcioServicer:
    """Every RPC of the inference service as grpcio handlers over one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def _admitted_unary(self, path: str, handler: Callable) -> Callable:
        """``handler`` run under admission unless ``path`` is a health call."""
        if path in HEALTH_METHODS:
            return handler
        admission = self.plane.admission

        def admitted(request, context):
            if not admission.try_enter():
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, ADMISSION_REFUSED)
            try:
                return handler(request, context)
            finally:
                admission.leave()

        return admitted

    def _admitted_stream(self, handler: Callable) -> Callable:
        """A streaming ``handler`` admitted from its start (before any message) until its last answer."""
        admission = self.plane.admission

        def admitted(request_iterator, context):
            if not admission.try_enter():
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, ADMISSION_REFUSED)
            try:
                yield from handler(request_iterator, context)
            finally:
                admission.leave()

        return admitted

    def _unary(self, name: str) -> grpc.RpcMethodHandler:
        plane = self.plane

        def handler(request_bytes: bytes, context):
            try:
                return answer_unary(plane, name, request_bytes, Call.of_grpc(context, plane.token_header))
            except Exception as exc:
                _abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(self._admitted_unary(SERVICE_PREFIX + name, handler))

    def _infer(self) -> grpc.RpcMethodHandler:
        plane = self.plane

        def handler(request_bytes: bytes, context):
            try:
                return answer_infer(plane, request_bytes, Call.of_grpc(context, plane.token_header))
            except Exception as exc:
                _abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(self._admitted_unary(SERVICE_PREFIX + "ModelInfer", handler))

    def _stream_infer(self) -> grpc.RpcMethodHandler:
        plane = self.plane

        def handler(request_iterator: Iterator[bytes], context) -> Iterator[bytes]:
            """Answer each streamed request in order; a failed one gets error_message, the stream goes on."""
            call = Call.of_grpc(context, plane.token_header)
            for request_bytes in request_iterator:
                if plane.draining.is_set():
                    yield draining_stream_answer(plane)
                    return
                yield answer_stream_request(plane, request_bytes, call)

        return grpc.stream_stream_rpc_method_handler(self._admitted_stream(handler))

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {name: self._unary(name) for name in UNARY}
        handlers["ModelInfer"] = self._infer()
        handlers["ModelStreamInfer"] = self._stream_infer()
        return grpc.method_handlers_generic_handler(pb.SERVICE_NAME, handlers)


class GrpcioFrontend:
    """grpcio's server with a thread pool: ``--handler-threads`` threads (default: one per admitted call) plus
    the health threads; grpcio's own concurrency bound set to match, our admission below it."""

    name = "grpcio"

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> int:
        s = self.plane.settings
        threads = s.handler_thread_count + HEALTH_THREADS
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tensorwire-rpc"),
            options=channel_options(s),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs + HEALTH_THREADS,
            interceptors=interceptors(s),
        )
        server.add_generic_rpc_handlers((GrpcioServicer(self.plane).generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(reflected_services(), server, pool=pb.POOL)
        self.port = listen(s, lambda address, credentials: (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)))
        server.start()
        self._server = server
        self.refresh_health()
        return self.port

    def refresh_health(self) -> None:
        """grpc.health.v1's statuses from the data plane (the server calls this twice a second)."""
        for service, status in health_statuses(self.plane).items():
            self.health.set(service, status)

    def release_memory(self) -> None:
        """After a burst: nothing more than the releaser's ``malloc_trim`` here (grpcio's pool threads take no
        work of ours between calls, so they cannot trim their own arenas as the core loop's pollers do)."""

    def stop(self, grace: float) -> None:
        """Refuse new calls, give those in flight ``grace`` seconds, then cancel what is left."""
        self.health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
            self._server = None

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()
