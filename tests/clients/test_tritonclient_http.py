"""The KServe v2 REST contract, checked with NVIDIA's tritonclient.http (unmodified) against a real server:
every endpoint, binary and JSON tensor data for every datatype, answers equal to the gRPC path's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from clients import random_tensor
from models import DTYPE_MODELS
from serving import start_server
from tritonclient.utils import InferenceServerException

RNG = np.random.default_rng(11)
# Datatypes JSON cannot carry (Triton's rule): sent and answered as binary data only.
BINARY_ONLY = {"FP16"}


def _random(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    return random_tensor(datatype, shape, RNG)


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


@pytest.fixture(scope="module")
def rest(server):
    client = httpclient.InferenceServerClient(server.http_address)
    yield client
    client.close()


def test_health(rest):
    assert rest.is_server_live()
    assert rest.is_server_ready()
    assert rest.is_model_ready("add_sub")
    assert rest.is_model_ready("versioned", "1")
    assert not rest.is_model_ready("no_such_model")
    assert not rest.is_model_ready("add_sub", "9")


def test_server_metadata(rest):
    md = rest.get_server_metadata()
    assert md["name"] == "tensorwire" and md["version"]
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(md["extensions"])


def test_model_metadata_and_config(rest):
    md = rest.get_model_metadata("add_sub")
    assert md["name"] == "add_sub" and md["platform"] == "onnxruntime_onnx" and md["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == [
        ("INPUT0", "FP32", [-1, 16]), ("INPUT1", "FP32", [-1, 16])]
    assert rest.get_model_metadata("versioned")["versions"] == ["1", "2"]
    cfg = rest.get_model_config("add_sub")
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    with pytest.raises(InferenceServerException) as err:
        rest.get_model_metadata("no_such_model")
    assert err.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", sorted(DTYPE_MODELS))
def test_infer_every_datatype_equals_grpc(rest, triton, model, binary):
    datatype = DTYPE_MODELS[model][0]
    data = _random(datatype, (2, 5))
    outputs = [httpclient.InferRequestedOutput("OUTPUT", binary_data=binary)]
    if datatype in BINARY_ONLY and not binary:
        with pytest.raises(InferenceServerException) as err:
            rest.infer(model, [_input("INPUT", data, datatype, binary)], outputs=outputs)
        assert err.value.status() == "400" and "cannot be sent as JSON" in err.value.message()
        return
    result = rest.infer(model, [_input("INPUT", data, datatype, binary)], outputs=outputs, request_id="r1")
    out = result.as_numpy("OUTPUT")
    assert result.get_response()["id"] == "r1"
    assert result.get_output("OUTPUT")["datatype"] == datatype and out.shape == (2, 5)
    g = grpcclient.InferInput("INPUT", [2, 5], datatype)
    g.set_data_from_numpy(data)
    expected = triton.infer(model, [g]).as_numpy("OUTPUT")
    if datatype == "BYTES":  # JSON carries BYTES as strings, which tritonclient.http gives back as str
        as_bytes = [x if isinstance(x, bytes) else x.encode() for x in out.reshape(-1)]
        assert as_bytes == expected.reshape(-1).tolist() == data.reshape(-1).tolist()
    else:
        assert out.dtype == expected.dtype and out.tobytes() == expected.tobytes() == data.tobytes()


def test_fp16_output_as_json_is_refused_before_running(rest):
    data = np.ones((1, 2), np.float16)
    with pytest.raises(InferenceServerException) as err:
        rest.infer("identity_fp16", [_input("INPUT", data, "FP16")],
                   outputs=[httpclient.InferRequestedOutput("OUTPUT", binary_data=False)])
    assert err.value.status() == "400" and "FP16" in err.value.message()


def test_binary_and_json_inputs_mixed_and_outputs_each_their_way(rest):
    a = RNG.standard_normal((3, 16)).astype(np.float32)
    b = RNG.standard_normal((3, 16)).astype(np.float32)
    result = rest.infer("add_sub", [_input("INPUT0", a, "FP32", True), _input("INPUT1", b, "FP32", False)],
                        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
                                 httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert "data" in result.get_output("OUTPUT1") and "data" not in result.get_output("OUTPUT0")


def test_versions_and_output_subset(rest):
    a = np.zeros((1, 16), np.float32)
    inputs = [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")]
    assert rest.infer("versioned", inputs, model_version="1").as_numpy("OUTPUT0")[0, 0] == 100.0
    latest = rest.infer("versioned", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert latest.get_response()["model_version"] == "2"
    assert [o["name"] for o in latest.get_response()["outputs"]] == ["OUTPUT1"]


def test_compressed_request_and_response(rest):
    a = RNG.standard_normal((8, 16)).astype(np.float32)
    for algorithm in ("gzip", "deflate"):
        result = rest.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")],
                            request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_errors_carry_the_grpc_message(rest, triton):
    bad = np.zeros((1, 16), np.int32)
    with pytest.raises(InferenceServerException) as err:
        rest.infer("add_sub", [_input("INPUT0", bad, "INT32"), _input("INPUT1", bad, "INT32")])
    assert err.value.status() == "400"
    g = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in g:
        t.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException) as gerr:
        triton.infer("add_sub", g)
    assert err.value.message() == gerr.value.message()
    with pytest.raises(InferenceServerException) as err:
        rest.infer("no_such_model", [_input("INPUT0", bad, "INT32")])
    assert err.value.status() == "404"


def test_statistics_and_repository_index(rest):
    before = rest.get_inference_statistics("identity_fp64")["model_stats"][0]
    data = np.ones((4, 2), np.float64)
    for _ in range(3):
        rest.infer("identity_fp64", [_input("INPUT", data, "FP64")])
    after = rest.get_inference_statistics("identity_fp64")["model_stats"][0]
    assert after.get("inference_count", 0) - before.get("inference_count", 0) == 12
    assert after.get("execution_count", 0) - before.get("execution_count", 0) == 3
    assert any(s["name"] == "add_sub" for s in rest.get_inference_statistics()["model_stats"])
    index = rest.get_model_repository_index()
    assert {"name": "add_sub", "version": "1", "state": "READY", "reason": ""} in index


def test_model_control_refused_unless_explicit(rest):
    with pytest.raises(InferenceServerException) as err:
        rest.load_model("add_sub")
    assert err.value.status() == "503" and "explicit model load / unload is not allowed" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        rest.unload_model("add_sub")
    assert err.value.status() == "503"


def test_shared_memory_refused_when_off_and_cuda_answers_as_grpc(rest):
    with pytest.raises(InferenceServerException) as err:
        rest.get_system_shared_memory_status()
    assert err.value.status() == "503"
    assert rest.get_cuda_shared_memory_status() == []
    rest.unregister_cuda_shared_memory()
    with pytest.raises(InferenceServerException) as err:
        rest.register_cuda_shared_memory("r", b"handle", 0, 16)
    assert err.value.status() == "501"


@pytest.fixture(scope="module")
def explicit_server(test_repository):
    with start_server(test_repository, "--model-control-mode", "explicit", "--load-model", "add_sub",
                      "--allow-shared-memory") as s:
        yield s


def test_load_unload_and_system_shared_memory(explicit_server):
    import tritonclient.utils.shared_memory as shm

    rest = httpclient.InferenceServerClient(explicit_server.http_address)
    assert not rest.is_model_ready("identity_int32")
    rest.load_model("identity_int32")
    assert rest.is_model_ready("identity_int32")
    rest.unload_model("identity_int32")
    assert not rest.is_model_ready("identity_int32")
    a = RNG.standard_normal((1, 16)).astype(np.float32)
    handle = shm.create_shared_memory_region("tw_http_in", "/tw_http_in", a.nbytes * 2)
    out_handle = shm.create_shared_memory_region("tw_http_out", "/tw_http_out", a.nbytes)
    try:
        shm.set_shared_memory_region(handle, [a, a])
        rest.register_system_shared_memory("in", "/tw_http_in", a.nbytes * 2)
        rest.register_system_shared_memory("out", "/tw_http_out", a.nbytes)
        assert {r["name"] for r in rest.get_system_shared_memory_status()} == {"in", "out"}
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory("in", a.nbytes)
        inputs[1].set_shared_memory("in", a.nbytes, offset=a.nbytes)
        out0 = httpclient.InferRequestedOutput("OUTPUT0")
        out0.set_shared_memory("out", a.nbytes)
        result = rest.infer("add_sub", inputs, outputs=[out0, httpclient.InferRequestedOutput("OUTPUT1")])
        assert result.get_output("OUTPUT0")["parameters"]["shared_memory_region"] == "out"
        got = shm.get_contents_as_numpy(out_handle, np.float32, [1, 16])
        np.testing.assert_array_equal(got, a + a)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)
        rest.unregister_system_shared_memory("in")
        rest.unregister_system_shared_memory()
        assert rest.get_system_shared_memory_status() == []
    finally:
        shm.destroy_shared_memory_region(handle)
        shm.destroy_shared_memory_region(out_handle)
        rest.close()


def test_every_worker_serves_http(test_repository):
    """--workers 2: both ports shared by the workers (SO_REUSEPORT); each new connection lands on one."""
    with start_server(test_repository, "--workers", "2") as s:
        a = np.ones((1, 16), np.float32)
        for _ in range(6):  # new connections each time: the kernel spreads them over the workers
            rest = httpclient.InferenceServerClient(s.http_address)
            result = rest.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
            rest.close()
        assert rest_ready(s)
    assert "stopped cleanly" in s.log()


def rest_ready(s) -> bool:
    rest = httpclient.InferenceServerClient(s.http_address)
    try:
        return rest.is_server_ready()
    finally:
        rest.close()
