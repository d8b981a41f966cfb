"""The server gives the same answers whichever codec it runs (Cython extension or pure-Python twin),
and a request whose zero-copy input view is misaligned (copied before ONNX Runtime) computes bit-identically."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from models import DTYPE_MODELS
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tensorwire.fastpath import load_codec


@pytest.fixture(scope="module")
def twin_server(test_repository):
    with start_server(test_repository, "--fastpath", "twin", "--no-malloc-tuning") as s:
        yield s


def _requests() -> list[service_pb2.ModelInferRequest]:
    rng = np.random.default_rng(11)
    reqs = []
    for i, model in enumerate(sorted(DTYPE_MODELS)):
        datatype = DTYPE_MODELS[model][0]
        r = service_pb2.ModelInferRequest(model_name=model, id=f"r{i}")
        r.parameters["priority"].int64_param = i
        r.inputs.add(name="INPUT", datatype=datatype, shape=[2, 3])
        if datatype == "BYTES":
            r.raw_input_contents.append(b"".join(len(w).to_bytes(4, "little") + w for w in
                                                 [b"a", b"bc", b"", b"def", b"\xc3\xa9", b"z"]))
        elif datatype == "FP16":
            r.raw_input_contents.append(rng.standard_normal(6).astype(np.float16).tobytes())
        else:
            r.raw_input_contents.append(rng.integers(0, 2, 6 * 8, dtype=np.uint8).tobytes()[
                : 6 * {"FP32": 4, "FP64": 8, "INT64": 8, "INT32": 4, "INT8": 1, "UINT8": 1, "BOOL": 1}[datatype]])
        reqs.append(r)
    typed = service_pb2.ModelInferRequest(model_name="cast", id="typed")
    typed.inputs.add(name="ids", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend([1, -2, 3, 2**40])
    typed.inputs.add(name="mask", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 0.5, 0, -1])
    typed.outputs.add(name="next_ids").parameters["binary_data"].bool_param = False
    reqs.append(typed)
    subset = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        subset.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        subset.raw_input_contents.append(rng.standard_normal(16).astype(np.float32).tobytes())
    subset.outputs.add(name="OUTPUT1")
    reqs.append(subset)
    return reqs


def test_ext_and_twin_servers_answer_alike(server, twin_server):
    assert "fastpath codec: Cython extension" in server.log()
    assert "fastpath codec: pure-Python twin" in twin_server.log()
    assert "malloc: large blocks kept for reuse" in server.log()  # the default (tensorwire.server.allocator)
    assert "malloc:" not in twin_server.log()  # --no-malloc-tuning
    with grpc.insecure_channel(server.address) as a, grpc.insecure_channel(twin_server.address) as b:
        ext_stub, twin_stub = service_pb2_grpc.GRPCInferenceServiceStub(a), service_pb2_grpc.GRPCInferenceServiceStub(b)
        for req in _requests():
            assert ext_stub.ModelInfer(req) == twin_stub.ModelInfer(req), req.model_name
        bad = _requests()[0]
        bad.inputs[0].shape[:] = [2, 4]
        errors = []
        for stub in (ext_stub, twin_stub):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(bad)
            errors.append((err.value.code(), err.value.details()))
        assert errors[0] == errors[1]


def test_misaligned_views_compute_bit_identical(server, test_repository):
    """A request laid out so the extension's view of the input is not 4-byte aligned."""
    codec = load_codec("ext")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    y = rng.standard_normal((3, 16)).astype(np.float32)
    for pad in range(4):
        req = service_pb2.ModelInferRequest(model_name="add_sub", id="x" * pad)
        for name in ("INPUT0", "INPUT1"):
            req.inputs.add(name=name, datatype="FP32", shape=[3, 16])
        req.raw_input_contents.extend([x.tobytes(), y.tobytes()])
        data = req.SerializeToString()
        view = np.frombuffer(codec.decode_infer_request(data).raw_input_contents[0], np.float32)
        if not view.flags.aligned:
            break
    else:
        pytest.fail("could not lay out a request with a misaligned input view")
    session = ort.InferenceSession(str(test_repository / "add_sub" / "1" / "model.onnx"))
    expected = session.run(None, {"INPUT0": x, "INPUT1": y})
    with grpc.insecure_channel(server.address) as channel:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req)
    for i, want in enumerate(expected):
        got = np.frombuffer(resp.raw_output_contents[i], np.float32).reshape(want.shape)
        assert got.tobytes() == want.tobytes()  # bit for bit
