"""The RPC layer: ``inference.GRPCInferenceService`` handlers, thin over the repository and its models.

Registered as a generic handler, without generated servicer classes: ModelInfer and ModelStreamInfer
take the request as the raw bytes grpcio received (no deserializer) and return wire bytes (no
serializer), so the fastpath codec is the only thing that touches tensor data. The other RPCs are
rare and use the protobuf classes of ``tensorwire.proto``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from tensorwire import __version__
from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument, NotFound, RequestError, Unavailable, Unimplemented
from tensorwire.fastpath import Codec
from tensorwire.server.limits import check_config_json_size, shown
from tensorwire.server.model import Call
from tensorwire.server.repository import READY, ModelRepository
from tensorwire.server.shared_memory import CUDA_UNSUPPORTED, SharedMemoryRegistry

log = logging.getLogger("tensorwire.grpc")

DRAINING = "server is shutting down; not accepting new requests"
MODEL_CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "binary_tensor_data", "parameters"]


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, RequestError):
        context.abort(exc.code, str(exc))
    log.exception("internal error in handler")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


class InFlight:
    """Inference requests being served, counted so that shutdown can say what its grace let finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.finished = 0

    def __enter__(self) -> None:
        with self._lock:
            self.started += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.finished += 1

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.started, self.finished


class InferenceServicer:
    """Handlers of every RPC; ``draining`` flips on shutdown so new work is refused."""

    def __init__(self, repository: ModelRepository, codec: Codec) -> None:
        self.repository = repository
        self.codec = codec
        self.regions = SharedMemoryRegistry(repository.settings)
        self.draining = threading.Event()
        self.started = threading.Event()
        self.in_flight = InFlight()

    # -- health ------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        if self.draining.is_set() or not self.started.is_set():
            return False
        strict = self.repository.settings.strict_readiness  # Triton's: every model it was asked for is available
        return not (strict and (self.repository.startup_failures or not self.repository.all_available()))

    def server_live(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.is_ready())

    def model_ready(self, request, context):
        try:
            self.repository.get(request.name, request.version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self.draining.is_set())

    def server_metadata(self, request, context):
        extensions = EXTENSIONS + ["system_shared_memory"] if self.regions.enabled else EXTENSIONS
        return pb.ServerMetadataResponse(name="tensorwire", version=__version__, extensions=extensions)

    # -- model description -------------------------------------------------------------------
    def model_metadata(self, request, context):
        model = self.repository.get(request.name, request.version)
        spec = model.spec
        entry = self.repository.entry(request.name)
        msg = pb.ModelMetadataResponse(
            name=spec.name,
            versions=sorted(entry.versions, key=int) if entry else [model.version],
            platform=spec.config.platform or "onnxruntime_onnx",
        )
        for t in spec.inputs:
            msg.inputs.add(name=t.name, datatype=t.datatype.name, shape=spec.full_shape(t))
        for t in spec.outputs:
            msg.outputs.add(name=t.name, datatype=t.datatype.name, shape=spec.full_shape(t))
        return msg

    def model_config(self, request, context):
        model = self.repository.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model.spec.config)

    def model_statistics(self, request, context):
        resp = pb.ModelStatisticsResponse()
        models = ([self.repository.get(request.name, request.version)] if request.name
                  else self.repository.loaded())
        for m in models:
            resp.model_stats.append(m.stats.to_proto(m.spec.name, m.version))
        return resp

    # -- repository --------------------------------------------------------------------------
    def repository_index(self, request, context):
        resp = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.repository.index(ready_only=request.ready):
            resp.models.add(name=name, version=version, state=state, reason=reason)
        return resp

    def repository_model_load(self, request, context):
        self._check_model_control(request.repository_name)
        config_json = None
        for key, param in request.parameters.items():
            if key == "config":
                config_json = param.string_param
                check_config_json_size(request.model_name, config_json)
            else:
                raise InvalidArgument(
                    f"load parameter {shown(key)} is not supported; tensorwire accepts 'config' (a ModelConfig as JSON)"
                )
        self.repository.load(request.model_name, config_json)
        return pb.RepositoryModelLoadResponse()

    def repository_model_unload(self, request, context):
        self._check_model_control(request.repository_name)
        self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _check_model_control(self, repository_name: str) -> None:
        """Load and unload are privileged: refused (Triton's words) unless --model-control-mode explicit."""
        if self.repository.settings.model_control_mode != "explicit":
            raise Unavailable(MODEL_CONTROL_DISABLED)
        root = self.repository.root
        if repository_name and repository_name not in (root.name, str(root)):
            raise NotFound(f"unknown repository {shown(repository_name)}; this server has one: '{root.name}'")

    # -- shared memory (server/shared_memory.py; docs/shared-memory.md) ---------------------------
    def system_shared_memory_status(self, request, context):
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in self.regions.status(request.name):
            resp.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return resp

    def system_shared_memory_register(self, request, context):
        self.regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def system_shared_memory_unregister(self, request, context):
        self.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def cuda_shared_memory(self, request, context):
        raise Unimplemented(CUDA_UNSUPPORTED)

    # -- inference (bytes in, bytes out) -----------------------------------------------------
    def model_infer(self, request_bytes: bytes, context: grpc.ServicerContext) -> bytes:
        if self.draining.is_set():
            raise Unavailable(DRAINING)
        return self.codec.encode_infer_response(self._infer(request_bytes, Call.of_grpc(context, self.regions)))

    def _infer(self, request_bytes: bytes, call: Call):
        """The model first (peek reads fields 1-2 only), then the body, decoded under that model's bounds:
        an unknown model or a hostile count costs nothing beyond grpcio's receive (docs/resilience.md)."""
        name, version = self.codec.peek_infer_request(request_bytes)
        model = self.repository.get(name, version)
        request = self.codec.decode_infer_request(request_bytes, model.check_contents)
        return model.infer(request, call)

    def model_stream_infer(self, request_iterator: Iterator[bytes], context) -> Iterator[bytes]:
        """Answer each streamed request in order; a failed one gets error_message, the stream goes on."""
        call = Call.of_grpc(context, self.regions)
        for request_bytes in request_iterator:
            if self.draining.is_set():
                yield self.codec.encode_stream_response(None, DRAINING)
                return
            try:
                with self.in_flight:
                    answer = self.codec.encode_stream_response(self._infer(request_bytes, call))
            except RequestError as exc:
                yield self.codec.encode_stream_response(None, str(exc))
                continue
            except Exception as exc:  # keep the stream alive on a bug, but say what happened
                log.exception("internal error in stream")
                yield self.codec.encode_stream_response(None, f"internal error: {type(exc).__name__}: {exc}")
                continue
            yield answer

    # -- registration ------------------------------------------------------------------------
    def generic_handler(self) -> grpc.GenericRpcHandler:
        def unary(method: Callable, request_cls) -> grpc.RpcMethodHandler:
            def handler(request_bytes: bytes, context):
                try:
                    try:
                        request = request_cls.FromString(request_bytes)
                    except DecodeError as exc:
                        raise InvalidArgument(f"malformed {request_cls.DESCRIPTOR.name}: {exc}") from None
                    return method(request, context).SerializeToString()
                except Exception as exc:
                    _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(handler)

        def infer(request_bytes: bytes, context):
            try:
                with self.in_flight:
                    return self.model_infer(request_bytes, context)
            except Exception as exc:
                _abort(context, exc)

        handlers = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": unary(self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": unary(self.repository_model_unload, pb.RepositoryModelUnloadRequest),
            "SystemSharedMemoryStatus": unary(self.system_shared_memory_status, pb.SystemSharedMemoryStatusRequest),
            "SystemSharedMemoryRegister": unary(self.system_shared_memory_register,
                                                pb.SystemSharedMemoryRegisterRequest),
            "SystemSharedMemoryUnregister": unary(self.system_shared_memory_unregister,
                                                  pb.SystemSharedMemoryUnregisterRequest),
            "CudaSharedMemoryStatus": unary(self.cuda_shared_memory, pb.CudaSharedMemoryStatusRequest),
            "CudaSharedMemoryRegister": unary(self.cuda_shared_memory, pb.CudaSharedMemoryRegisterRequest),
            "CudaSharedMemoryUnregister": unary(self.cuda_shared_memory, pb.CudaSharedMemoryUnregisterRequest),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        return grpc.method_handlers_generic_handler(pb.SERVICE_NAME, handlers)

    def ready_models(self) -> list[str]:
        return [n for n, _, s, _ in self.repository.index() if s == READY]
