"""``inference.GRPCInferenceService`` as bytes in, bytes out: one table for both gRPC front ends.

Each RPC is a function of the data plane: protobuf bytes are parsed with the classes of ``tensorwire.proto``,
answered by :class:`~tensorwire.server.dataplane.DataPlane`, and serialized back. ModelInfer and
ModelStreamInfer never build protobuf objects: the fastpath codec decodes and encodes their bytes. The
grpcio front end (``grpc_service.py``) and the C-core serving loop (``grpc_core.py``) only move these bytes
and map :class:`~tensorwire.errors.RequestError` to a status, so the two cannot answer differently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from tensorwire import __version__
from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument, RequestError
from tensorwire.proto.messages import InferResponse
from tensorwire.server.call import ANY_CALLER, Call
from tensorwire.server.dataplane import DRAINING, SERVER_NAME, DataPlane
from tensorwire.server.model import Model
from tensorwire.server.security import CATEGORIES

log = logging.getLogger("tensorwire.grpc")

SERVICE_PREFIX = f"/{pb.SERVICE_NAME}/"
MODEL_INFER = SERVICE_PREFIX + "ModelInfer"
MODEL_STREAM_INFER = SERVICE_PREFIX + "ModelStreamInfer"
# grpc.health.v1 service that is SERVING while the process runs, whatever its models do: Kubernetes'
# liveness probe (deploy/), which must not restart a pod because one model failed to load.
LIVENESS_SERVICE = "tensorwire.live"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Calls that admission never refuses (--max-concurrent-rpcs): a busy server still answers its probes.
HEALTH_METHODS = frozenset(CATEGORIES["health"])


def _server_metadata(plane: DataPlane, _request, _call: Call):
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=plane.server_extensions())


def _model_metadata(plane: DataPlane, request, _call: Call):
    meta = plane.model_metadata(request.name, request.version)
    msg = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
    for t in meta.inputs:
        msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    for t in meta.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return msg


def _model_statistics(plane: DataPlane, request, _call: Call):
    return pb.ModelStatisticsResponse(model_stats=plane.model_statistics(request.name, request.version))


def _repository_index(plane: DataPlane, request, _call: Call):
    resp = pb.RepositoryIndexResponse()
    for e in plane.repository_index(ready_only=request.ready):
        resp.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
    return resp


def _load_parameters(request) -> dict:
    """ModelRepositoryParameter values as Python values (the oneof field that is set)."""
    return {key: getattr(p, p.WhichOneof("parameter_choice")) if p.WhichOneof("parameter_choice") else None
            for key, p in request.parameters.items()}


def _repository_model_load(plane: DataPlane, request, _call: Call):
    plane.load_model(request.model_name, request.repository_name, _load_parameters(request))
    return pb.RepositoryModelLoadResponse()


def _repository_model_unload(plane: DataPlane, request, _call: Call):
    plane.unload_model(request.model_name, request.repository_name)
    return pb.RepositoryModelUnloadResponse()


def _system_shared_memory_status(plane: DataPlane, request, call: Call):
    resp = pb.SystemSharedMemoryStatusResponse()
    for r in plane.system_shared_memory_status(request.name, call):
        resp.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
    return resp


def _system_shared_memory_register(plane: DataPlane, request, call: Call):
    plane.system_shared_memory_register(request.name, request.key, request.offset, request.byte_size, call)
    return pb.SystemSharedMemoryRegisterResponse()


def _system_shared_memory_unregister(plane: DataPlane, request, call: Call):
    plane.system_shared_memory_unregister(request.name, call)
    return pb.SystemSharedMemoryUnregisterResponse()


def _cuda_shared_memory_status(plane: DataPlane, request, _call: Call):
    plane.cuda_shared_memory_status(request.name)
    return pb.CudaSharedMemoryStatusResponse()


def _cuda_shared_memory_register(plane: DataPlane, request, _call: Call):
    plane.cuda_shared_memory_register(request.name)
    return pb.CudaSharedMemoryRegisterResponse()


def _cuda_shared_memory_unregister(plane: DataPlane, request, _call: Call):
    plane.cuda_shared_memory_unregister(request.name)
    return pb.CudaSharedMemoryUnregisterResponse()


Answer = Callable[[DataPlane, object, Call], object]  # (data plane, parsed request, caller) -> response message

# Every unary RPC but ModelInfer: name -> (request class, answer).
UNARY: dict[str, tuple[type, Answer]] = {
    "ServerLive": (pb.ServerLiveRequest, lambda plane, _r, _c: pb.ServerLiveResponse(live=plane.live())),
    "ServerReady": (pb.ServerReadyRequest, lambda plane, _r, _c: pb.ServerReadyResponse(ready=plane.ready())),
    "ModelReady": (pb.ModelReadyRequest,
                   lambda plane, r, _c: pb.ModelReadyResponse(ready=plane.model_ready(r.name, r.version))),
    "ServerMetadata": (pb.ServerMetadataRequest, _server_metadata),
    "ModelMetadata": (pb.ModelMetadataRequest, _model_metadata),
    "ModelConfig": (pb.ModelConfigRequest,
                    lambda plane, r, _c: pb.ModelConfigResponse(config=plane.model_config(r.name, r.version))),
    "ModelStatistics": (pb.ModelStatisticsRequest, _model_statistics),
    "RepositoryIndex": (pb.RepositoryIndexRequest, _repository_index),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, _repository_model_load),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, _repository_model_unload),
    "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, _system_shared_memory_status),
    "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest, _system_shared_memory_register),
    "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest, _system_shared_memory_unregister),
    "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest, _cuda_shared_memory_status),
    "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest, _cuda_shared_memory_register),
    "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest, _cuda_shared_memory_unregister),
}


def answer_unary(plane: DataPlane, method: str, request_bytes: bytes, call: Call = ANY_CALLER) -> bytes:
    """The serialized answer of unary RPC ``method`` (a name of ``UNARY``); RequestError on failure."""
    request_cls, answer = UNARY[method]
    try:
        request = request_cls.FromString(request_bytes)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed {request_cls.DESCRIPTOR.name}: {exc}") from None
    return answer(plane, request, call).SerializeToString()


def answer_infer(plane: DataPlane, request_bytes, call: Call, model: Model | None = None) -> bytes:
    """ModelInfer: the response's wire bytes; RequestError on failure (``model``: already looked up)."""
    return plane.codec.encode_infer_response(plane.infer_bytes(request_bytes, call, model))


def answer_infer_then(plane: DataPlane, request_bytes, call: Call, model: Model,
                      then: Callable[[bytes | None, BaseException | None], None]) -> None:
    """``answer_infer`` for a model that ``batches``, without waiting: ``then(answer bytes, None)`` or
    ``then(None, error)`` once its batch ran (on the thread that ran it); raises what fails before it is queued."""
    def encode(response: InferResponse | None, error: BaseException | None) -> None:
        if error is None:
            try:
                answer = plane.codec.encode_infer_response(response)
            except Exception as exc:
                then(None, exc)
                return
            then(answer, None)
        else:
            then(None, error)

    plane.infer_bytes_then(request_bytes, call, model, encode)


def encode_stream_answer(plane: DataPlane, response: InferResponse | None, error: BaseException | None) -> bytes:
    """One ModelStreamInferResponse: the answer, or its error_message (a stream goes on after a failed request)."""
    if error is None:
        return plane.codec.encode_stream_response(response)
    if isinstance(error, RequestError):
        return plane.codec.encode_stream_response(None, str(error))
    log.error("internal error in stream", exc_info=error)
    return plane.codec.encode_stream_response(None, internal_message(error))


def draining_stream_answer(plane: DataPlane) -> bytes:
    """The last message of a stream whose server began to drain: DRAINING as its error_message."""
    return plane.codec.encode_stream_response(None, DRAINING)


def answer_stream_request(plane: DataPlane, request_bytes, call: Call, model: Model | None = None) -> bytes:
    """One request of ModelStreamInfer answered, in its wire form; never raises for a request's failure."""
    try:
        return encode_stream_answer(plane, plane.infer_bytes(request_bytes, call, model), None)
    except Exception as exc:  # the stream goes on; the error travels in error_message
        return encode_stream_answer(plane, None, exc)


def answer_stream_request_then(plane: DataPlane, request_bytes, call: Call, model: Model,
                               then: Callable[[bytes], None]) -> None:
    """``answer_stream_request`` for a model that ``batches``, without waiting: ``then(answer bytes)`` once
    its batch ran, or at once if it failed before it was queued."""
    def encode(response: InferResponse | None, error: BaseException | None) -> None:
        try:
            answer = encode_stream_answer(plane, response, error)
        except Exception as exc:
            answer = encode_stream_answer(plane, None, exc)
        then(answer)

    try:
        plane.infer_bytes_then(request_bytes, call, model, encode)
    except Exception as exc:
        then(encode_stream_answer(plane, None, exc))


def internal_message(exc: BaseException) -> str:
    """What a client is told of a failure that is not its request's fault (the log has the traceback)."""
    return f"internal error: {type(exc).__name__}: {exc}"


def health_statuses(plane: DataPlane) -> dict[str, int]:
    """grpc.health.v1 status of each service name: "" and the inference service follow readiness; the
    liveness service is SERVING while the process runs."""
    ready = health_pb2.HealthCheckResponse.SERVING if plane.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
    return {"": ready, pb.SERVICE_NAME: ready, LIVENESS_SERVICE: health_pb2.HealthCheckResponse.SERVING}


def reflected_services() -> list[str]:
    """The services server reflection describes, their files made known to our private descriptor pool."""
    try:
        pb.POOL.FindFileByName(health_pb2.DESCRIPTOR.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        health_pb2.DESCRIPTOR.CopyToProto(proto)
        pb.POOL.Add(proto)
    return [pb.SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME]
