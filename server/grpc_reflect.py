"""Server reflection on the C-core serving loop: grpc_reflection's own servicer behind a context adapter.

``grpcurl`` and other tools describe the API through ``grpc.reflection.v1alpha.ServerReflection``, a
bidirectional stream. grpc_reflection's ``ReflectionServicer`` implements it as a grpcio stream handler: a
function of a request iterator and a ``grpc.ServicerContext`` that yields one response per request. The
C-core loop receives one message at a time, so :class:`FedStream` keeps that generator alive for the
stream's life and feeds it each request as it arrives; :class:`CoreContext` is the ``ServicerContext`` the
handler sees, answering from the loop's call state (deadline, cancellation, metadata, peer) and turning
``abort`` into the call's status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from tensorwire import proto as pb
from tensorwire.errors import RequestError
from tensorwire.server.grpc_methods import reflected_services

REFLECTION_INFO = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"


class Aborted(RequestError):
    """``context.abort(code, details)`` of a handler: the call ends with that status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class CoreContext(grpc.ServicerContext):
    """A ``grpc.ServicerContext`` over one call of the C-core loop (``rpc``: a ``grpc_core.Rpc``)."""

    def __init__(self, rpc) -> None:
        self._rpc = rpc
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def is_active(self) -> bool:
        return self._rpc.is_active()

    def time_remaining(self) -> float | None:
        left = self._rpc.deadline - time.time()
        return None if left > 1e9 else max(left, 0.0)

    def cancel(self) -> None:
        self._rpc.call.cancel(grpc.StatusCode.CANCELLED.value[0], "cancelled by the server")

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._rpc.on_end(callback)

    def invocation_metadata(self):
        return self._rpc.metadata

    def peer(self) -> str:
        peer = self._rpc.call.peer()
        return peer.decode() if isinstance(peer, bytes) else peer

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    def auth_context(self):
        return {}

    def set_compression(self, compression) -> None:
        """Answers go uncompressed on this loop."""

    def send_initial_metadata(self, initial_metadata) -> None:
        raise NotImplementedError("the C-core loop sends no custom initial metadata")

    def set_trailing_metadata(self, trailing_metadata) -> None:
        raise NotImplementedError("the C-core loop sends no custom trailing metadata")

    def trailing_metadata(self):
        return None

    def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(code, details)

    def abort_with_status(self, status):
        raise Aborted(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def disable_next_message_compression(self) -> None:
        """Nothing to disable: answers go uncompressed."""


class FedStream:
    """A grpcio stream handler (request iterator, context -> responses) fed one request at a time: for
    handlers that answer each request with exactly one response before they read the next (reflection)."""

    def __init__(self, handler: Callable, request_type, rpc) -> None:
        self._request_type = request_type
        self._next = None
        self._responses = handler(self._requests(), CoreContext(rpc))

    def _requests(self) -> Iterator:
        while self._next is not None:
            request, self._next = self._next, None
            yield request

    def answer(self, request_bytes: bytes) -> bytes:
        """The response to one request, serialized; Aborted or StopIteration ends the call."""
        self._next = self._request_type.FromString(request_bytes)
        return next(self._responses).SerializeToString()


def reflection_methods() -> dict[str, Callable]:
    """Method path -> a function of an ``Rpc`` giving the stream's answer function."""
    servicer = reflection.ReflectionServicer(reflected_services(), pool=pb.POOL)

    def open_stream(rpc) -> Callable[[bytes, object], tuple[bytes, bool]]:
        fed = FedStream(servicer.ServerReflectionInfo, reflection_pb2.ServerReflectionRequest, rpc)
        return lambda request, _rpc: (fed.answer(request), False)

    return {REFLECTION_INFO: open_stream}
