"""Every error tensorwire shows a user, in one hierarchy.

``TensorwireError`` is the root: the CLI prints its message and exits 2, and anything else that escapes
is a bug. Below it, ``RequestError`` and its subclasses carry a gRPC status as a class attribute: the
server turns one into ``context.abort(err.code, str(err))`` and the client raises the subclass that
matches the status it received. Errors that have nothing to do with a request (an export that cannot be
vouched for, a missing runtime, a bad setting) carry no status.
"""

from __future__ import annotations

import grpc


class TensorwireError(Exception):
    """Base class: a failure with a message meant for the person or client that caused it."""


# A message quotes what a client sent (a config's dims, a name); cut, it still says what was wrong, and a
# client cannot make the server echo megabytes back.
MAX_MESSAGE_CHARS = 2048


class RequestError(TensorwireError):
    """A request failed; ``code`` is the gRPC status the server answers with (a class attribute). The
    message is cut to MAX_MESSAGE_CHARS characters."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "", *args) -> None:
        if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} characters cut)"
        super().__init__(message, *args)


class InvalidArgument(RequestError):
    """Malformed request, or a tensor whose name, datatype, shape or size does not fit the model."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RequestError):
    """Unknown model or version."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(RequestError):
    """Model known but not ready, an RPC the server's settings refuse, or the server is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(RequestError):
    """Queue full or message too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(ResourceExhausted):
    """A request (or its answer) is larger than a size bound of the server: RESOURCE_EXHAUSTED on gRPC as
    in Triton, 413 on HTTP (a size is no reason to retry, which HTTP clients do on 429)."""

    http_status = 413


class DeadlineExceeded(RequestError):
    """The client's deadline passed before the answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(RequestError):
    """The server failed for a reason that is not the request's fault (a bug or a runtime failure)."""

    code = grpc.StatusCode.INTERNAL


class Unimplemented(RequestError):
    """The RPC or feature is not implemented by this server."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(RequestError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(RequestError):
    """The call did not carry valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RequestError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(RequestError):
    """What the request would create exists already (a shared-memory region name, as Triton)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ModelLoadError(RequestError):
    """A model could not be loaded; the reason is kept for RepositoryIndex and ModelReady."""

    code = grpc.StatusCode.INVALID_ARGUMENT


_BY_STATUS: dict[grpc.StatusCode, type[RequestError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, Unavailable, ResourceExhausted, DeadlineExceeded, Internal,
                Unimplemented, Cancelled, Unauthenticated, PermissionDenied, AlreadyExists)
}


def for_status(code: grpc.StatusCode) -> type[RequestError]:
    """The error class of a gRPC status (made once for a status without a class of its own), so the
    client raises types whose ``code`` is the status received, never a field changed per instance."""
    cls = _BY_STATUS.get(code)
    if cls is None:
        name = "".join(part.title() for part in code.name.split("_"))
        cls = _BY_STATUS[code] = type(name, (RequestError,), {"code": code, "__module__": __name__})
    return cls


class RuntimeMissing(TensorwireError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


class SettingsError(TensorwireError):
    """A server setting (a flag, a certificate file, a CPU list) cannot be used; the server does not start."""
