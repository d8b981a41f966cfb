"""The wire contract: message classes from a private descriptor pool, and its shared vocabulary.

Everything that speaks the protocol without being the codec lives here: ``datatypes`` (the one table of
datatype names), ``messages`` (the decoded request / to-be-encoded response objects) and ``tensors``
(wire data <-> numpy). The server, the client, export and bench import these; ``tensorwire.fastpath``
holds only the codecs, so nothing needs the codec to name a datatype.

``inference.binpb`` is compiled from the ``.proto`` files beside it when the package is built. It is
loaded into a pool of our own rather than protobuf's default pool, so that a process may import
tensorwire beside tritonclient or MLServer, whose generated modules register the same ``inference.*``
names in the default pool.
"""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "inference.GRPCInferenceService"


def _load_pool() -> descriptor_pool.DescriptorPool:
    try:
        data = resources.files(__name__).joinpath("inference.binpb").read_bytes()
    except FileNotFoundError as exc:  # a source tree that was never built
        raise ImportError(
            "tensorwire/proto/inference.binpb is missing: install the package (pip install .) or run "
            "`python setup.py build_py` so the protocol descriptors are compiled"
        ) from exc
    pool = descriptor_pool.DescriptorPool()
    for file_proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file_proto)
    return pool


POOL = _load_pool()


def message_class(full_name: str) -> type:
    """The message class of ``full_name`` (e.g. ``inference.ModelInferRequest``) in our pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))



ServerLiveRequest = message_class("inference.ServerLiveRequest")
ServerLiveResponse = message_class("inference.ServerLiveResponse")
ServerReadyRequest = message_class("inference.ServerReadyRequest")
ServerReadyResponse = message_class("inference.ServerReadyResponse")
ModelReadyRequest = message_class("inference.ModelReadyRequest")
ModelReadyResponse = message_class("inference.ModelReadyResponse")
ServerMetadataRequest = message_class("inference.ServerMetadataRequest")
ServerMetadataResponse = message_class("inference.ServerMetadataResponse")
ModelMetadataRequest = message_class("inference.ModelMetadataRequest")
ModelMetadataResponse = message_class("inference.ModelMetadataResponse")
InferParameter = message_class("inference.InferParameter")
InferTensorContents = message_class("inference.InferTensorContents")
ModelInferRequest = message_class("inference.ModelInferRequest")
ModelInferResponse = message_class("inference.ModelInferResponse")
ModelStreamInferResponse = message_class("inference.ModelStreamInferResponse")
ModelConfigRequest = message_class("inference.ModelConfigRequest")
ModelConfigResponse = message_class("inference.ModelConfigResponse")
ModelStatisticsRequest = message_class("inference.ModelStatisticsRequest")
ModelStatisticsResponse = message_class("inference.ModelStatisticsResponse")
ModelStatistics = message_class("inference.ModelStatistics")
InferStatistics = message_class("inference.InferStatistics")
InferBatchStatistics = message_class("inference.InferBatchStatistics")
StatisticDuration = message_class("inference.StatisticDuration")
ModelRepositoryParameter = message_class("inference.ModelRepositoryParameter")
RepositoryIndexRequest = message_class("inference.RepositoryIndexRequest")
RepositoryIndexResponse = message_class("inference.RepositoryIndexResponse")
RepositoryModelLoadRequest = message_class("inference.RepositoryModelLoadRequest")
RepositoryModelLoadResponse = message_class("inference.RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = message_class("inference.RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = message_class("inference.RepositoryModelUnloadResponse")
ModelConfig = message_class("inference.ModelConfig")
ModelInput = message_class("inference.ModelInput")
ModelOutput = message_class("inference.ModelOutput")
ModelInstanceGroup = message_class("inference.ModelInstanceGroup")
ModelDynamicBatching = message_class("inference.ModelDynamicBatching")
ModelParameter = message_class("inference.ModelParameter")
SystemSharedMemoryStatusRequest = message_class("inference.SystemSharedMemoryStatusRequest")
SystemSharedMemoryStatusResponse = message_class("inference.SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterRequest = message_class("inference.SystemSharedMemoryRegisterRequest")
SystemSharedMemoryRegisterResponse = message_class("inference.SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterRequest = message_class("inference.SystemSharedMemoryUnregisterRequest")
SystemSharedMemoryUnregisterResponse = message_class("inference.SystemSharedMemoryUnregisterResponse")
CudaSharedMemoryStatusRequest = message_class("inference.CudaSharedMemoryStatusRequest")
CudaSharedMemoryStatusResponse = message_class("inference.CudaSharedMemoryStatusResponse")
CudaSharedMemoryRegisterRequest = message_class("inference.CudaSharedMemoryRegisterRequest")
CudaSharedMemoryRegisterResponse = message_class("inference.CudaSharedMemoryRegisterResponse")
CudaSharedMemoryUnregisterRequest = message_class("inference.CudaSharedMemoryUnregisterRequest")
CudaSharedMemoryUnregisterResponse = message_class("inference.CudaSharedMemoryUnregisterResponse")
