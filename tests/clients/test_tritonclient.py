"""The wire contract, checked with NVIDIA's tritonclient (unmodified) against a real server."""

from __future__ import annotations

import queue
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from clients import random_tensor
from models import DTYPE_MODELS
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tensorwire.client import encode_request

RNG = np.random.default_rng(7)


def _random(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    return random_tensor(datatype, shape, RNG)


def _input(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr)
    return t


@pytest.fixture(scope="module")
def server(test_repository, frontend):
    """The test repository served once per gRPC front end: the wire contract holds on both."""
    with start_server(test_repository, "--grpc-frontend", frontend) as s:
        assert f"gRPC front end: {frontend}" in s.log()
        yield s


@pytest.fixture(scope="module")
def triton(server):
    client = grpcclient.InferenceServerClient(server.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server):
    """tritonclient's own generated stub, for messages its high-level API does not build (typed contents)."""
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_health(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("add_sub")
    assert triton.is_model_ready("versioned", "1")
    assert not triton.is_model_ready("no_such_model")
    assert not triton.is_model_ready("add_sub", "9")


def test_server_metadata(triton):
    md = triton.get_server_metadata(as_json=True)
    assert md["name"] == "tensorwire"
    assert md["version"]
    assert "model_repository" in md["extensions"]


def test_model_metadata(triton):
    md = triton.get_model_metadata("add_sub", as_json=True)
    assert md["name"] == "add_sub"
    assert md["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == [
        ("INPUT0", "FP32", ["-1", "16"]), ("INPUT1", "FP32", ["-1", "16"])]
    assert [t["name"] for t in md["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert triton.get_model_metadata("versioned", as_json=True)["versions"] == ["1", "2"]


def test_model_config_parses_in_tritonclient(triton):
    cfg = triton.get_model_config("add_sub", as_json=True)["config"]
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["16"]}
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"


def test_config_completed_from_graph(triton):
    """`cast` has no config.pbtxt: inputs, outputs and max_batch_size come from the ONNX graph."""
    cfg = triton.get_model_config("cast", as_json=True)["config"]
    assert cfg["max_batch_size"] == 4  # the server's --default-max-batch-size
    assert {i["name"]: (i["data_type"], i["dims"]) for i in cfg["input"]} == {
        "ids": ("TYPE_INT64", ["-1"]), "mask": ("TYPE_FP32", ["-1"])}
    assert {o["name"]: o["data_type"] for o in cfg["output"]} == {"scaled": "TYPE_FP32", "next_ids": "TYPE_INT64"}


@pytest.mark.parametrize("model", sorted(DTYPE_MODELS))
def test_infer_raw_every_datatype(triton, model):
    datatype = DTYPE_MODELS[model][0]
    data = _random(datatype, (2, 5))
    result = triton.infer(model, [_input("INPUT", data, datatype)])
    out = result.as_numpy("OUTPUT")
    assert out.shape == (2, 5)
    assert result.get_output("OUTPUT").datatype == datatype
    np.testing.assert_array_equal(out, data)


TYPED_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
                "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents",
                "BOOL": "bool_contents", "BYTES": "bytes_contents"}


@pytest.mark.parametrize("datatype", sorted(TYPED_FIELDS))
def test_infer_typed_contents(stub, datatype):
    model = next(m for m, (d, _) in DTYPE_MODELS.items() if d == datatype)
    data = _random(datatype, (3, 4))
    req = service_pb2.ModelInferRequest(model_name=model, id=f"typed-{datatype}")
    t = req.inputs.add(name="INPUT", datatype=datatype, shape=[3, 4])
    getattr(t.contents, TYPED_FIELDS[datatype]).extend(data.reshape(-1).tolist())
    resp = stub.ModelInfer(req)
    assert resp.id == f"typed-{datatype}"
    assert resp.outputs[0].datatype == datatype and list(resp.outputs[0].shape) == [3, 4]
    raw = resp.raw_output_contents[0]
    if datatype == "BYTES":
        from tritonclient.utils import deserialize_bytes_tensor

        np.testing.assert_array_equal(deserialize_bytes_tensor(raw).reshape(3, 4), data)
    else:
        np.testing.assert_array_equal(np.frombuffer(raw, dtype=data.dtype).reshape(3, 4), data)


def test_typed_output_contents_on_request(stub):
    """binary_data=false on a requested output answers with typed contents instead of raw bytes."""
    req = service_pb2.ModelInferRequest(model_name="identity_int64")
    req.inputs.add(name="INPUT", datatype="INT64", shape=[1, 3]).contents.int64_contents.extend([5, -6, 7])
    req.outputs.add(name="OUTPUT").parameters["binary_data"].bool_param = False
    resp = stub.ModelInfer(req)
    assert len(resp.raw_output_contents) == 0
    assert list(resp.outputs[0].contents.int64_contents) == [5, -6, 7]


def test_fp16_typed_contents_rejected_with_reason(stub):
    req = service_pb2.ModelInferRequest(model_name="identity_fp16")
    req.inputs.add(name="INPUT", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field" in err.value.details()


def test_several_inputs_and_outputs(triton):
    a = RNG.standard_normal((3, 16)).astype(np.float32)
    b = RNG.standard_normal((3, 16)).astype(np.float32)
    result = triton.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")], request_id="req-42")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert result.get_response().id == "req-42"
    assert result.get_response().model_version == "1"


def test_mixed_datatypes_in_and_out(triton):
    ids = RNG.integers(0, 30000, (2, 7), dtype=np.int64)
    mask = RNG.integers(0, 2, (2, 7)).astype(np.float32)
    result = triton.infer("cast", [_input("ids", ids, "INT64"), _input("mask", mask, "FP32")])
    np.testing.assert_allclose(result.as_numpy("scaled"), ids.astype(np.float32) * mask)
    np.testing.assert_array_equal(result.as_numpy("next_ids"), ids + 1)


def test_requested_output_subset(triton):
    a = np.ones((1, 16), np.float32)
    b = np.full((1, 16), 3, np.float32)
    result = triton.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")],
                          outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    names = [o.name for o in result.get_response().outputs]
    assert names == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_versions(triton):
    a = np.zeros((1, 16), np.float32)
    inputs = [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")]
    assert triton.infer("versioned", inputs, model_version="1").as_numpy("OUTPUT0")[0, 0] == 100.0
    assert triton.infer("versioned", inputs, model_version="2").as_numpy("OUTPUT0")[0, 0] == 200.0
    latest = triton.infer("versioned", inputs)
    assert latest.as_numpy("OUTPUT0")[0, 0] == 200.0 and latest.get_response().model_version == "2"


def test_model_without_batch_dimension(triton):
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(triton.infer("fixed", [_input("X", x, "FP32")]).as_numpy("Y"), 2 * x)


def test_stream_infer_answers_in_order_and_reports_errors(triton):
    results: queue.Queue = queue.Queue()
    triton.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(3):
            a = np.full((1, 16), i, np.float32)
            triton.async_stream_infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")],
                                      request_id=f"s{i}")
        bad = np.zeros((1, 16), np.int32)
        triton.async_stream_infer("add_sub", [_input("INPUT0", bad, "INT32"), _input("INPUT1", bad, "INT32")],
                                  request_id="bad")
        a = np.full((1, 16), 9, np.float32)
        triton.async_stream_infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")],
                                  request_id="after-error")
        got = [results.get(timeout=10) for _ in range(5)]
    finally:
        triton.stop_stream()
    for i in range(3):
        result, error = got[i]
        assert error is None and result.get_response().id == f"s{i}"
        assert result.as_numpy("OUTPUT0")[0, 0] == 2 * i
    result, error = got[3]
    assert result is None and isinstance(error, InferenceServerException)
    assert "datatype INT32 does not match the model, which expects FP32" in error.message()
    result, error = got[4]
    assert error is None and result.as_numpy("OUTPUT0")[0, 0] == 18


def test_statistics_count_inferences(triton):
    before = triton.get_inference_statistics("identity_fp64", as_json=True)["model_stats"][0]
    data = np.ones((4, 2), np.float64)
    for _ in range(3):
        triton.infer("identity_fp64", [_input("INPUT", data, "FP64")])
    after = triton.get_inference_statistics("identity_fp64", as_json=True)["model_stats"][0]
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 12  # 3 requests x 4
    assert int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)) == 3
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    assert any(b["batch_size"] == "4" for b in after["batch_stats"])


def test_batch_of_64_images_fits_default_message_limit(triton):
    """38.5 MB: a batch of 64 3x224x224 FP32 images, under the default 64 MiB limit."""
    data = RNG.standard_normal((8, 64 * 3 * 224 * 224 // 8)).astype(np.float32)
    out = triton.infer("identity_fp32", [_input("INPUT", data, "FP32")]).as_numpy("OUTPUT")
    np.testing.assert_array_equal(out, data)


def test_over_large_message_is_resource_exhausted(triton):
    data = np.zeros((8, 9 * 2**20 // 4 * 1), np.float32)  # 72 MiB > 64 MiB
    with pytest.raises(InferenceServerException) as err:
        triton.infer("identity_fp32", [_input("INPUT", data, "FP32")])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert triton.is_server_live()


def test_gzip_request_over_the_bound_once_decompressed_is_refused(server):
    """A request whose gzip form is tiny but whose decompressed size passes --max-message-mb (64 MiB) is
    refused with RESOURCE_EXHAUSTED before it costs its decompressed size; under the bound, gzip is served."""
    big = encode_request("identity_fp32", {"INPUT": np.zeros((1, 17 * 2**20), np.float32)})  # 68 MiB of zeros
    small = encode_request("identity_fp32", {"INPUT": np.arange(1024, dtype=np.float32).reshape(1, -1)})
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            infer(big, compression=grpc.Compression.Gzip, timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        answer = service_pb2.ModelInferResponse.FromString(infer(small, compression=grpc.Compression.Gzip, timeout=60))
        np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32),
                                      np.arange(1024, dtype=np.float32))


def test_health_watch_follows_the_server(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=60)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_method_is_unimplemented(server):
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")(b"", timeout=60)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_service_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        infer = db.FindFileContainingSymbol("inference.GRPCInferenceService")
        methods = {m.name for s in infer.service for m in s.method}
        assert {"ModelInfer", "ModelStreamInfer", "RepositoryModelLoad"} <= methods


def test_tensorwire_imports_beside_tritonclient():
    """Our messages live in a private descriptor pool: no 'duplicate symbol' next to tritonclient."""
    code = ("import tritonclient.grpc.service_pb2, tritonclient.grpc.model_config_pb2\n"
            "import tensorwire.proto as pb, tensorwire.server.app\n"
            "from google.protobuf import descriptor_pool\n"
            "assert pb.POOL is not descriptor_pool.Default()\n"
            "import tritonclient.grpc\n"
            "print(pb.ModelInferRequest.DESCRIPTOR.full_name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "inference.ModelInferRequest"
