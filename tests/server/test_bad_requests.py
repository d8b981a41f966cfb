"""Every class of bad request gets the right status code and a message that says what was wrong,
and the server answers the next good request correctly (checked after each case)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def add_sub_request(batch: int = 1, datatype: str = "FP32", width: int = 16, **kw) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="add_sub", **kw)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype=datatype, shape=[batch, width])
        req.raw_input_contents.append(np.arange(batch * width, dtype=np.float32).tobytes())
    return req


def _drop_input(req):
    del req.inputs[1]
    del req.raw_input_contents[1]
    return req


def _mixed(req):
    req.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    return req


def _typed_count(req):
    del req.raw_input_contents[:]
    for t in req.inputs:
        t.contents.fp32_contents.extend([1.0] * 15)
    return req


def _rename(req):
    req.inputs[1].name = "INPUT9"
    return req


def _duplicate(req):
    req.inputs[1].name = "INPUT0"
    return req


def _short_raw(req):
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    return req


def _raw_count(req):
    req.raw_input_contents.append(b"")
    return req


def _negative_dim(req):
    req.inputs[0].shape[:] = [1, -16]
    return req


def _unknown_output(req):
    req.outputs.add(name="OUTPUT7")
    return req


def _batch_mismatch(req):
    req.inputs[1].shape[:] = [2, 16]
    req.raw_input_contents[1] = np.zeros(32, np.float32).tobytes()
    return req


def _bad_datatype_name(req):
    req.inputs[0].datatype = "FLOAT32"
    return req


def _unknown_model(req):
    req.model_name = "nope"
    return req


def _unknown_version(req):
    req.model_version = "7"
    return req


CASES = {
    # case: (mutation, status code, words the message must contain)
    "unknown model": (_unknown_model, NOT_FOUND, ["unknown model 'nope'"]),
    "unknown version": (_unknown_version, NOT_FOUND, ["no loaded version '7'", "loaded versions: 1"]),
    "unknown input": (_rename, INVALID, ["unknown input 'INPUT9'", "expected inputs: INPUT0 (FP32 [-1,16])"]),
    "missing input": (_drop_input, INVALID, ["missing input(s) INPUT1"]),
    "duplicate input": (_duplicate, INVALID, ["'INPUT0' is given more than once"]),
    "wrong datatype": (lambda r: r, INVALID, ["datatype INT32 does not match", "expects FP32"]),
    "unknown datatype": (_bad_datatype_name, INVALID, ["unknown datatype 'FLOAT32'"]),
    "wrong rank": (None, INVALID, ["rank 3", "expects rank 2 [-1,16]"]),
    "wrong dims": (None, INVALID, ["dimension 1 is 15", "expects 16"]),
    "byte size": (_short_raw, INVALID, ["holds 60 bytes", "needs 64 bytes"]),
    "batch too large": (None, INVALID, ["batch size 9 exceeds", "max_batch_size 8"]),
    "batch mismatch": (_batch_mismatch, INVALID, ["batch size 2 differs"]),
    "negative dim": (_negative_dim, INVALID, ["negative dimension"]),
    "raw and typed mixed": (_mixed, INVALID, ["typed contents", "raw_input_contents", "one or the other"]),
    "raw count": (_raw_count, INVALID, ["raw_input_contents has 3 entries", "2 inputs"]),
    "typed count": (_typed_count, INVALID, ["fp32_contents holds 15 elements", "needs 16"]),
    "unknown output": (_unknown_output, INVALID, ["unknown output 'OUTPUT7'", "OUTPUT0, OUTPUT1"]),
}


def _build(case: str) -> service_pb2.ModelInferRequest:
    if case == "wrong datatype":
        req = add_sub_request(datatype="INT32")
    elif case == "wrong rank":
        req = add_sub_request()
        for t in req.inputs:
            t.shape[:] = [1, 16, 1]
    elif case == "wrong dims":
        req = add_sub_request(width=15)
    elif case == "batch too large":
        req = add_sub_request(batch=9)
    else:
        req = add_sub_request()
    mutate = CASES[case][0]
    return mutate(req) if mutate else req


@pytest.fixture(scope="module")
def server(test_repository, frontend):
    """Hostile requests meet each gRPC front end."""
    with start_server(test_repository, "--grpc-frontend", frontend) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _assert_still_serving(stub) -> None:
    resp = stub.ModelInfer(add_sub_request(batch=2))
    out = np.frombuffer(resp.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(out, 2 * np.arange(32, dtype=np.float32))


def _expect(stub, req, code, *words: str) -> None:
    """``req`` fails with ``code`` and a message holding every one of ``words``; the server goes on serving."""
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details(), f"{w!r} not in {err.value.details()!r}"
    _assert_still_serving(stub)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request(stub, case):
    _, code, words = CASES[case]
    _expect(stub, _build(case), code, *words)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x2a\xff\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"])
def test_malformed_bytes(server, stub, payload):
    """Garbage on the wire (bad varint, length past the end, invalid UTF-8) is INVALID_ARGUMENT."""
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(payload)
    assert err.value.code() == INVALID
    assert "malformed ModelInferRequest" in err.value.details()
    _assert_still_serving(stub)


def test_bytes_tensor_truncated(stub):
    req = service_pb2.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT", datatype="BYTES", shape=[1, 2])
    req.raw_input_contents.append(b"\x03\x00\x00\x00abc\x09\x00\x00\x00short")
    _expect(stub, req, INVALID, "BYTES element 1 declares 9 bytes but only 5 remain")


def test_bytes_tensor_not_utf8(stub):
    req = service_pb2.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT", datatype="BYTES", shape=[1, 1])
    req.raw_input_contents.append(b"\x02\x00\x00\x00\xc3\x28")
    _expect(stub, req, INVALID, "not valid UTF-8")


def test_huge_declared_shape_does_not_allocate(stub):
    """A shape claiming 2**60 elements with 64 bytes of data is refused by size, not by running out of memory."""
    req = service_pb2.ModelInferRequest(model_name="identity_fp32")
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 2**60])
    req.raw_input_contents.append(bytes(64))
    _expect(stub, req, INVALID, f"needs {2**62} bytes")


def _typed_fp16_request() -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="identity_fp16")
    req.inputs.add(name="INPUT", datatype="FP16", shape=[1, 2])
    req.raw_input_contents.append(np.ones(2, np.float16).tobytes())
    req.parameters["binary_data_output"].bool_param = False  # typed contents: FP16 has no such field
    return req


def test_typed_output_the_protocol_cannot_carry_is_refused_before_running(stub):
    _expect(stub, _typed_fp16_request(), INVALID, "output 'OUTPUT' is FP16", "raw output")


def test_stream_reports_an_unencodable_answer_and_goes_on(stub):
    good = service_pb2.ModelInferRequest(model_name="identity_fp16", id="good")
    good.inputs.add(name="INPUT", datatype="FP16", shape=[1, 2])
    good.raw_input_contents.append(np.ones(2, np.float16).tobytes())
    answers = list(stub.ModelStreamInfer(iter([_typed_fp16_request(), good])))
    assert len(answers) == 2
    assert "output 'OUTPUT' is FP16" in answers[0].error_message
    assert answers[1].error_message == "" and answers[1].infer_response.id == "good"
    np.testing.assert_array_equal(np.frombuffer(answers[1].infer_response.raw_output_contents[0], np.float16),
                                  np.ones(2, np.float16))


def test_bytes_elements_over_the_bound_are_refused_before_splitting(stub):
    """More BYTES elements than --max-bytes-elements (default 65,536): RESOURCE_EXHAUSTED naming the flag."""
    req = service_pb2.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT", datatype="BYTES", shape=[1, 70_000])
    req.raw_input_contents.append(b"\x01\x00\x00\x00x" * 70_000)
    _expect(stub, req, grpc.StatusCode.RESOURCE_EXHAUSTED, "70000 BYTES elements", "--max-bytes-elements")


def test_typed_contents_are_checked_against_the_model_before_decoding(stub):
    """Typed contents for a shape the model refuses: the shape's error, whatever the contents hold."""
    req = service_pb2.ModelInferRequest(model_name="identity_int64")
    req.inputs.add(name="INPUT", datatype="INT64", shape=[9, 100_000])  # max_batch_size 8
    req.inputs[0].contents.int64_contents.extend([1] * 900_000)
    _expect(stub, req, INVALID, "batch size 9 exceeds the model's max_batch_size 8")


def test_stream_looks_the_model_up_first_and_goes_on(stub):
    """ModelStreamInfer takes the same path: an unknown model with a typed body is NOT_FOUND's message."""
    unknown = service_pb2.ModelInferRequest(model_name="no_such_model")
    unknown.inputs.add(name="INPUT", datatype="INT64", shape=[1, 1000])
    unknown.inputs[0].contents.int64_contents.extend([1] * 1000)
    good = service_pb2.ModelInferRequest(model_name="identity_int64", id="good")
    good.inputs.add(name="INPUT", datatype="INT64", shape=[1, 3])
    good.inputs[0].contents.int64_contents.extend([1, 2, 3])
    answers = list(stub.ModelStreamInfer(iter([unknown, good])))
    assert "no_such_model" in answers[0].error_message
    assert answers[1].error_message == "" and answers[1].infer_response.id == "good"
    np.testing.assert_array_equal(np.frombuffer(answers[1].infer_response.raw_output_contents[0], np.int64),
                                  [1, 2, 3])
