"""Error types that carry their gRPC status code, so every layer raises one kind of thing.

The server turns a ``TensorwireError`` into ``context.abort(err.code, str(err))``; anything else that
escapes a handler is a bug and becomes INTERNAL.
"""

from __future__ import annotations

import grpc


class TensorwireError(Exception):
    """Base class: a failure with a message meant for the client that caused it."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(TensorwireError):
    """Malformed request, or a tensor whose name, datatype, shape or size does not fit the model."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TensorwireError):
    """Unknown model or version."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(TensorwireError):
    """Model known but not ready, or the server is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(TensorwireError):
    """Queue full or message too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(TensorwireError):
    """The client's deadline passed before the answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelLoadError(TensorwireError):
    """A model could not be loaded; the reason is kept for RepositoryIndex and ModelReady."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class RuntimeMissing(RuntimeError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""
