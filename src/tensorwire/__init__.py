"""tensorwire: PyTorch model -> optimized ONNX -> KServe v2 gRPC serving -> benchmarks.

Subpackages: ``tensorwire.export`` (torch -> ONNX model repository), ``tensorwire.server`` (the gRPC
server), ``tensorwire.fastpath`` (wire codecs: Cython hot path and its pure-Python twin),
``tensorwire.proto`` (the wire contract and its vocabulary: datatypes, messages, tensors),
``tensorwire.bench`` (benchmarks), ``tensorwire.client`` (a small Python client),
``tensorwire.launcher`` and ``tensorwire.echo`` (a server, or the bare gRPC floor, in a child process).
"""

from tensorwire.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RequestError,
    ResourceExhausted,
    TensorwireError,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TensorwireError",
    "RequestError",
    "InvalidArgument",
    "NotFound",
    "Unavailable",
    "ResourceExhausted",
    "DeadlineExceeded",
]
