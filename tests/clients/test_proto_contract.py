"""Our proto/ against the public contract as NVIDIA ships it in tritonclient: every message and field
they have in common must agree on number, type and cardinality, or Go/Rust/C# clients break."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from tritonclient.grpc import model_config_pb2, service_pb2

from tensorwire import proto as pb

# Messages of RPCs tensorwire does not serve (they answer UNIMPLEMENTED): shared memory, trace, logging.
NOT_SERVED = ("SharedMemory", "Trace", "LogSettings")


def _messages(file_descriptor):
    for name, d in file_descriptor.message_types_by_name.items():
        if not any(s in name for s in NOT_SERVED):
            yield d


def _compare(theirs, ours, path: str, problems: list[str]) -> None:
    for f in theirs.fields:
        o = ours.fields_by_name.get(f.name)
        if o is None:
            problems.append(f"{path}.{f.name}: missing")
            continue
        if (o.number, o.type, o.is_repeated) != (f.number, f.type, f.is_repeated):
            problems.append(f"{path}.{f.name}: ours {(o.number, o.type, o.is_repeated)} "
                            f"theirs {(f.number, f.type, f.is_repeated)}")
        if f.message_type is not None and o.message_type.full_name != f.message_type.full_name:
            problems.append(f"{path}.{f.name}: type {o.message_type.full_name} vs {f.message_type.full_name}")
    for nested in theirs.nested_types:
        if nested.name not in ours.nested_types_by_name:
            problems.append(f"{path}.{nested.name}: nested message missing")
        else:
            _compare(nested, ours.nested_types_by_name[nested.name], f"{path}.{nested.name}", problems)
    for enum in theirs.enum_types:
        mine = ours.enum_types_by_name.get(enum.name)
        theirs_values = {v.name: v.number for v in enum.values}
        if mine is None or {v.name: v.number for v in mine.values} != theirs_values:
            problems.append(f"{path}.{enum.name}: enum differs")


@pytest.mark.parametrize("module", [service_pb2, model_config_pb2], ids=["grpc_service", "model_config"])
def test_messages_match_tritonclient(module):
    problems: list[str] = []
    for theirs in _messages(module.DESCRIPTOR):
        ours = pb.POOL.FindMessageTypeByName(theirs.full_name)
        _compare(theirs, ours, theirs.full_name, problems)
    assert not problems, "\n".join(problems)


def test_service_methods_match_tritonclient():
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = pb.POOL.FindServiceByName("inference.GRPCInferenceService")
    served = {m.name for m in ours.methods}
    assert served == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                      "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
                      "RepositoryModelLoad", "RepositoryModelUnload",
                      "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                      "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"}
    for name in served:
        t, o = theirs.methods_by_name[name], ours.methods_by_name[name]
        assert (o.input_type.full_name, o.output_type.full_name) == (t.input_type.full_name, t.output_type.full_name)
        assert (o.client_streaming, o.server_streaming) == (t.client_streaming, t.server_streaming)


def test_private_pool():
    """Both copies of inference.* coexist: tritonclient's in the default pool, ours in a private one."""
    assert pb.POOL is not descriptor_pool.Default()
    assert pb.ModelInferRequest.DESCRIPTOR.file.pool is pb.POOL
    assert service_pb2.ModelInferRequest.DESCRIPTOR.file.pool is descriptor_pool.Default()
    assert pb.ModelInferRequest.DESCRIPTOR is not service_pb2.ModelInferRequest.DESCRIPTOR
