"""A small Python client for any KServe v2 gRPC server (tensorwire, Triton, MLServer, ...).

numpy in, numpy out; errors come back as the same typed exceptions the server raises
(``InvalidArgument``, ``NotFound``, ...), each carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from tensorwire import errors
from tensorwire import proto as pb
from tensorwire.proto.datatypes import DATATYPES, datatype_of_numpy
from tensorwire.proto.tensors import deserialize_bytes_tensor, raw_from_array

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # grpcio's own default receive limit is only 4 MiB

def _error(exc: grpc.RpcError) -> errors.RequestError:
    return errors.for_status(exc.code())(f"{exc.code().name}: {exc.details()}")


@dataclass(frozen=True)
class TLS:
    """TLS for a client channel, with tritonclient's names: PEM file paths of the root certificate(s) that
    the server's certificate must chain to (None: the system's roots) and, for mutual TLS, the client's own
    private key and certificate chain."""

    root_certificates: str | Path | None = None
    private_key: str | Path | None = None
    certificate_chain: str | Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(read(self.root_certificates), read(self.private_key),
                                            read(self.certificate_chain))


class _Headers(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (e.g. restricted-protocol keys) to every call of a channel."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = tuple((k.lower(), v) for k, v in headers.items())

    def _with_headers(self, details):
        return details._replace(metadata=tuple(details.metadata or ()) + self.headers)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_headers(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_headers(client_call_details), request_iterator)


def open_channel(address: str, *, tls: TLS | None = None, options: Sequence[tuple] = (),
                 headers: Mapping[str, str] | None = None) -> grpc.Channel:
    """A channel to ``address``: plaintext, or TLS / mutual TLS when ``tls`` is given; ``headers`` are sent
    with every call made on it."""
    if tls is None:
        channel = grpc.insecure_channel(address, options=list(options))
    else:
        channel = grpc.secure_channel(address, tls.credentials(), options=list(options))
    return grpc.intercept_channel(channel, _Headers(headers)) if headers else channel


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    id: str

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def encode_request(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
                   version: str = "", request_id: str = "") -> bytes:
    """ModelInferRequest wire bytes with raw inputs, as every V2 server accepts them."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        arr = np.asarray(value)
        dt = datatype_of_numpy(arr.dtype)
        req.inputs.add(name=name, datatype=dt.name, shape=arr.shape)
        req.raw_input_contents.append(bytes(raw_from_array(arr, dt)))
    for name in outputs or ():
        req.outputs.add(name=name)
    return req.SerializeToString()


def decode_response(data: bytes) -> InferResult:
    resp = pb.ModelInferResponse.FromString(data)
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(resp.outputs):
        dt = DATATYPES[t.datatype]
        shape = tuple(t.shape)
        if i < len(resp.raw_output_contents):
            raw = resp.raw_output_contents[i]
            count = int(np.prod(shape)) if shape else 1
            out[t.name] = (deserialize_bytes_tensor(raw, count, t.name) if dt.name == "BYTES"
                           else np.frombuffer(raw, dtype=dt.numpy)).reshape(shape)
        else:
            values = getattr(t.contents, dt.contents_field)
            out[t.name] = np.array(list(values), dtype=dt.numpy).reshape(shape)
    return InferResult(out, resp.model_name, resp.model_version, resp.id)


class InferenceClient:
    """Blocking client over one gRPC channel. Use as a context manager, or call ``close()``."""

    def __init__(self, address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout: float | None = None, tls: TLS | None = None,
                 headers: Mapping[str, str] | None = None, options: Sequence[tuple] = ()) -> None:
        """``tls``: TLS or mutual TLS (see :class:`TLS`); ``headers``: gRPC metadata sent with every call,
        e.g. ``{"triton-grpc-protocol-admin-key": "..."}`` for a server with restricted protocols;
        ``options``: more grpcio channel arguments (keepalive, a connection of its own, ...)."""
        self.address = address
        self.timeout = timeout
        self._headers = tuple((k.lower(), v) for k, v in (headers or {}).items()) or None
        self._channel = open_channel(address, tls=tls, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ])

        def method(name: str, response_cls=None):
            return self._channel.unary_unary(
                f"/{pb.SERVICE_NAME}/{name}",
                request_serializer=None if response_cls is None else (lambda m: m.SerializeToString()),
                response_deserializer=None if response_cls is None else response_cls.FromString,
            )

        self._infer = method("ModelInfer")  # bytes in, bytes out
        self._live = method("ServerLive", pb.ServerLiveResponse)
        self._ready = method("ServerReady", pb.ServerReadyResponse)
        self._model_ready = method("ModelReady", pb.ModelReadyResponse)
        self._metadata = method("ModelMetadata", pb.ModelMetadataResponse)
        self._config = method("ModelConfig", pb.ModelConfigResponse)

    def _call(self, fn, request, timeout: float | None):
        try:
            return fn(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._headers)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def server_live(self, timeout: float | None = None) -> bool:
        return self._call(self._live, pb.ServerLiveRequest(), timeout).live

    def server_ready(self, timeout: float | None = None) -> bool:
        return self._call(self._ready, pb.ServerReadyRequest(), timeout).ready

    def model_ready(self, name: str, version: str = "", timeout: float | None = None) -> bool:
        return self._call(self._model_ready, pb.ModelReadyRequest(name=name, version=version), timeout).ready

    def model_metadata(self, name: str, version: str = "", timeout: float | None = None) -> dict:
        msg = self._call(self._metadata, pb.ModelMetadataRequest(name=name, version=version), timeout)
        return json_format.MessageToDict(msg)

    def model_config(self, name: str, version: str = "", timeout: float | None = None):
        """The model's configuration as the server completed it (a ``tensorwire.proto`` ModelConfig)."""
        return self._call(self._config, pb.ModelConfigRequest(name=name, version=version), timeout).config

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None,
              version: str = "", request_id: str = "", timeout: float | None = None) -> InferResult:
        data = encode_request(model, inputs, outputs, version, request_id)
        return decode_response(self._call(self._infer, data, timeout))

    def infer_bytes(self, request: bytes, timeout: float | None = None) -> bytes:
        """Send pre-encoded ModelInferRequest bytes (for load generators that encode once)."""
        return self._call(self._infer, request, timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
