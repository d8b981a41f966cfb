"""Example-based tests of the wire codecs: the Cython extension against its twin and protobuf itself.

Every decode test runs on both codecs and compares the result with what protobuf (upb) parses from the
same bytes, so ext == twin == protobuf. Hand-written wire bytes cover what protobuf never writes but
must accept (unpacked fields, repeats, unknown fields, groups) and what it must reject.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from wire_forms import from_pb, key, normalize, varint

from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument
from tensorwire.fastpath import load_codec
from tensorwire.proto.datatypes import DATATYPES
from tensorwire.proto.messages import InferResponse, OutputTensor
from tensorwire.proto.tensors import array_from_contents, array_from_raw, serialize_bytes_tensor

# --- wire-format builders ---------------------------------------------------------------------------


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def vint(field: int, n: int) -> bytes:
    return key(field, 0) + varint(n)


def f32(field: int, x: float) -> bytes:
    return key(field, 5) + struct.pack("<f", x)


def f64(field: int, x: float) -> bytes:
    return key(field, 1) + struct.pack("<d", x)


def pack_f32(*xs: float) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


def group(field: int, payload: bytes = b"") -> bytes:
    return key(field, 3) + payload + key(field, 4)


def nested_groups(depth: int, field: int = 15) -> bytes:
    payload = b""
    for _ in range(depth):
        payload = group(field, payload)
    return payload


def entry(k: bytes, value: bytes | None = None, extra: bytes = b"") -> bytes:
    """A map<string, InferParameter> entry."""
    return ld(1, k) + (b"" if value is None else ld(2, value)) + extra


# --- comparable forms ---------------------------------------------------------------------------------


def expected(buf: bytes) -> tuple:
    return from_pb(pb.ModelInferRequest.FromString(buf))


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(params=["ext", "twin"])
def codec(request):
    """Both codecs; load_codec("ext") raises ImportError (so every ext test fails) if it is not built."""
    return load_codec(request.param)


def decode(codec, buf) -> tuple:
    """Decode with ``codec`` and check the result against protobuf's parse of the same bytes."""
    got = normalize(codec.decode_infer_request(buf))
    assert got == expected(bytes(buf))
    return got


def test_extension_is_built():
    ext = load_codec("ext")
    assert ext.name == "ext"
    from tensorwire.fastpath import _wire

    assert _wire.__file__.endswith((".so", ".pyd")), _wire.__file__
    assert load_codec("auto").name == "ext"


# --- well-formed requests -----------------------------------------------------------------------------


def full_request():
    """A request with every field set, typed contents of every kind and raw contents."""
    msg = pb.ModelInferRequest(model_name="résnet-50 ✓", model_version="3", id="req-😀")
    msg.parameters["b"].bool_param = True
    msg.parameters["f"].bool_param = False
    msg.parameters["i"].int64_param = -(2**63)
    msg.parameters["u"].uint64_param = 2**64 - 1
    msg.parameters["s"].string_param = "ünïcode"
    msg.parameters["e"].string_param = ""
    msg.parameters["d"].double_param = -1.5e300
    msg.parameters["none"].SetInParent()
    msg.parameters[""].int64_param = 0
    t = msg.inputs.add(name="typed", datatype="INT32", shape=[2, -1, 0, 2**63 - 1, -(2**63)])
    t.parameters["p"].int64_param = 7
    c = t.contents
    c.bool_contents.extend([True, False, True])
    c.int_contents.extend([-(2**31), -1, 0, 2**31 - 1])
    c.int64_contents.extend([-(2**63), -1, 2**63 - 1])
    c.uint_contents.extend([0, 2**32 - 1])
    c.uint64_contents.extend([0, 2**64 - 1])
    c.fp32_contents.extend([1.5, -0.0, float("inf")])
    c.fp64_contents.extend([np.pi, -1e-300])
    c.bytes_contents.extend([b"", b"\x00\xff", "é".encode()])
    msg.inputs.add(name="raw", datatype="FP32", shape=[2, 2])
    msg.inputs.add()
    o = msg.outputs.add(name="out")
    o.parameters["classification"].int64_param = 3
    msg.outputs.add()
    msg.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    msg.raw_input_contents.append(b"")
    return msg


def test_every_field(codec):
    buf = full_request().SerializeToString()
    got = decode(codec, buf)
    req = codec.decode_infer_request(buf)
    assert req.model_name == "résnet-50 ✓" and req.id == "req-😀"
    assert req.parameters == {
        "b": True, "f": False, "i": -(2**63), "u": 2**64 - 1, "s": "ünïcode", "e": "",
        "d": -1.5e300, "none": None, "": 0,
    }
    assert type(req.parameters["b"]) is bool and type(req.parameters["u"]) is int
    assert req.inputs[0].shape == (2, -1, 0, 2**63 - 1, -(2**63))
    assert req.inputs[0].contents["int_contents"].tolist() == [-(2**31), -1, 0, 2**31 - 1]
    assert req.inputs[0].contents["bytes_contents"] == [b"", b"\x00\xff", "é".encode()]
    assert req.inputs[2].name == "" and req.inputs[2].contents == {}
    assert req.outputs[0].parameters == {"classification": 3} and req.outputs[1].name == ""
    assert len(got[6]) == 2 and got[6][1] == b""


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_kinds(codec, kind):
    buf = full_request().SerializeToString()
    decode(codec, kind(buf))


def test_empty_request(codec):
    req = codec.decode_infer_request(b"")
    assert normalize(req) == ("", "", "", [], [], [], [])


def test_zero_copy_raw_contents():
    ext = load_codec("ext")
    payload = np.arange(150_000, dtype=np.float32)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[150_000])
    msg.raw_input_contents.append(payload.tobytes())
    buf = msg.SerializeToString()
    req = ext.decode_infer_request(buf)
    view = np.frombuffer(req.raw_input_contents[0], np.uint8)
    assert np.shares_memory(view, np.frombuffer(buf, np.uint8))
    arr = array_from_raw(req.raw_input_contents[0], DATATYPES["FP32"], (150_000,), "x")
    assert np.shares_memory(arr, np.frombuffer(buf, np.uint8))
    np.testing.assert_array_equal(arr, payload)


def test_zero_copy_packed_fp32_contents():
    ext = load_codec("ext")
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 2, 3])
    buf = msg.SerializeToString()
    arr = ext.decode_infer_request(buf).inputs[0].contents["fp32_contents"]
    assert np.shares_memory(arr, np.frombuffer(buf, np.uint8))
    assert arr.tolist() == [1, 2, 3]


@pytest.mark.parametrize("name", sorted(DATATYPES))
def test_raw_contents_of_every_datatype(codec, name):
    dt = DATATYPES[name]
    rng = np.random.default_rng(7)
    if name == "BYTES":
        arr = np.array([b"a", b"", "ü".encode(), b"\x00" * 5], dtype=object)
        data = serialize_bytes_tensor(arr)
    elif dt.numpy is None:  # BF16: numpy has no dtype; the wire carries 2-byte patterns
        data = rng.integers(0, 2**16, 6, dtype=np.uint16).tobytes()
    else:
        data = rng.integers(0, 256, 6 * dt.itemsize, dtype=np.uint8).tobytes()
        if name == "BOOL":
            data = bytes(b & 1 for b in data)
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="x", datatype=name, shape=[2, 3] if name != "BYTES" else [4])
    msg.raw_input_contents.append(data)
    buf = msg.SerializeToString()
    decode(codec, buf)
    req = codec.decode_infer_request(buf)
    assert bytes(req.raw_input_contents[0]) == data
    if dt.numpy is not None:
        got = array_from_raw(req.raw_input_contents[0], dt, req.inputs[0].shape, "x")
        assert got.shape == req.inputs[0].shape


TYPED_VALUES = {
    "BOOL": [True, False, True],
    "UINT8": [0, 255], "UINT16": [0, 65535], "UINT32": [0, 2**32 - 1], "UINT64": [0, 2**64 - 1],
    "INT8": [-128, 127], "INT16": [-(2**15), 2**15 - 1], "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP32": [1.5, -2.25, float("inf")], "FP64": [np.pi, -0.0],
    "BYTES": [b"abc", b""],
}


@pytest.mark.parametrize("name", sorted(TYPED_VALUES))
def test_typed_contents_of_every_datatype(codec, name):
    dt = DATATYPES[name]
    values = TYPED_VALUES[name]
    msg = pb.ModelInferRequest()
    t = msg.inputs.add(name="x", datatype=name, shape=[len(values)])
    getattr(t.contents, dt.contents_field).extend(values)
    buf = msg.SerializeToString()
    decode(codec, buf)
    req = codec.decode_infer_request(buf)
    arr = array_from_contents(req.inputs[0].contents, dt, req.inputs[0].shape, "x")
    if name == "BYTES":
        assert arr.tolist() == values
    else:
        np.testing.assert_array_equal(arr, np.array(values, dtype=dt.numpy))


# --- encodings protobuf accepts but never writes ------------------------------------------------------


def test_packed_and_unpacked_are_equivalent(codec):
    contents = ld(2, varint(-1) + varint(7)) + ld(6, pack_f32(1, 2))
    packed = ld(5, ld(3, varint(2) + varint(-3)) + ld(5, contents))
    unpacked = ld(5, vint(3, 2) + vint(3, -3) + ld(5, vint(2, -1) + vint(2, 7) + f32(6, 1) + f32(6, 2)))
    assert decode(codec, packed) == decode(codec, unpacked)
    req = codec.decode_infer_request(unpacked)
    assert req.inputs[0].shape == (2, -3)
    assert req.inputs[0].contents["int_contents"].tolist() == [-1, 7]
    assert req.inputs[0].contents["fp32_contents"].tolist() == [1, 2]


@pytest.mark.parametrize("field", range(1, 8))
def test_packed_unpacked_mixed_for_every_numeric_field(codec, field):
    if field == 6:
        one, two = f32(6, 1.5), ld(6, struct.pack("<2f", 2.5, 3.5))
    elif field == 7:
        one, two = f64(7, 1.5), ld(7, struct.pack("<2d", 2.5, 3.5))
    else:
        one, two = vint(field, 1), ld(field, varint(2**40 + 5) + varint(-2))
    buf = ld(5, ld(5, two + one + two) + ld(5, one))
    got = decode(codec, buf)
    assert len(got[4][0][4]) == 1


def test_varint_truncation_like_protobuf(codec):
    contents = vint(2, -5) + vint(2, 2**40 + 3) + vint(4, -1) + vint(1, 2**40) + vint(1, 2**64 - 2**63)
    buf = ld(5, ld(5, contents))
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    c = req.inputs[0].contents
    assert c["int_contents"].tolist() == [-5, 3]
    assert c["uint_contents"].tolist() == [2**32 - 1]
    assert c["bool_contents"].tolist() == [True, True]
    # 10-byte varints: bits beyond 64 are dropped; an over-padded varint is still valid
    buf = ld(5, ld(5, key(1, 0) + b"\x80" * 9 + b"\x02") + vint(3, 1)) + key(1, 2) + b"\x81\x80\x00" + b"a"
    assert decode(codec, buf)[0] == "a"
    assert codec.decode_infer_request(buf).inputs[0].contents["bool_contents"].tolist() == [False]


def test_repeated_singular_fields_last_wins(codec):
    buf = (
        ld(1, b"first") + ld(2, b"1") + ld(1, b"second") + ld(3, b"a") + ld(3, b"b")
        + ld(5, ld(1, b"x") + ld(2, b"FP32") + ld(1, b"y") + ld(2, b"INT8"))
        + ld(6, ld(1, b"o1") + ld(1, b"o2"))
    )
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    assert (req.model_name, req.model_version, req.id) == ("second", "1", "b")
    assert (req.inputs[0].name, req.inputs[0].datatype) == ("y", "INT8")
    assert req.outputs[0].name == "o2"


def test_oneof_last_wins(codec):
    value = vint(1, 1) + ld(3, b"s") + vint(2, -4) + f64(4, 2.5) + vint(5, 9) + vint(1, 0)
    buf = ld(4, entry(b"k", value))
    decode(codec, buf)
    assert codec.decode_infer_request(buf).parameters == {"k": False}


def test_embedded_messages_are_merged(codec):
    contents_a = ld(6, struct.pack("<2f", 1, 2)) + ld(8, b"x") + vint(3, 5)
    contents_b = f32(6, 3) + ld(6, struct.pack("<f", 4)) + ld(8, b"y") + ld(1, b"\x01\x00")
    buf = ld(5, ld(1, b"t") + ld(5, contents_a) + vint(3, 4) + ld(5, contents_b) + ld(5, b""))
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    c = req.inputs[0].contents
    assert c["fp32_contents"].tolist() == [1, 2, 3, 4]
    assert c["bytes_contents"] == [b"x", b"y"]
    assert c["int64_contents"].tolist() == [5]
    assert c["bool_contents"].tolist() == [True, False]
    # a map value that appears twice is merged, so the second (empty) one keeps the first's oneof
    buf = ld(4, entry(b"k", ld(3, b"abc")) + ld(2, b""))
    assert codec.decode_infer_request(buf).parameters == {"k": "abc"}
    decode(codec, buf)


def test_map_semantics(codec):
    buf = (
        ld(4, entry(b"k", vint(1, 1)))
        + ld(4, entry(b"k", vint(2, 7)))  # duplicate key: last wins
        + ld(4, entry(b"missing"))  # no value: a default InferParameter
        + ld(4, ld(2, vint(2, 3)))  # no key: ""
        + ld(4, ld(1, b"a") + ld(1, b"b") + ld(2, vint(1, 1)))  # key twice in one entry
        + ld(4, b"")
        + ld(4, entry(b"r", ld(3, b"abc"))) + ld(4, entry(b"r", b""))  # a repeated key replaces, not merges
    )
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    assert req.parameters == {"k": 7, "missing": None, "": None, "b": True, "r": None}


def test_map_entry_with_unknown_fields_is_dropped(codec):
    # upb moves such an entry to the parent's unknown fields: it is not in the map
    for extra in (vint(3, 1), f32(9, 1.0), group(7), key(2, 0) + varint(1), vint(1, 5)):
        buf = ld(4, entry(b"keep", vint(1, 1))) + ld(4, entry(b"drop", vint(2, 1), extra))
        assert codec.decode_infer_request(buf).parameters == {"keep": True}
        decode(codec, buf)
    # an unknown field inside the value is the value's own business
    buf = ld(4, entry(b"k", vint(9, 1) + vint(2, 3)))
    assert codec.decode_infer_request(buf).parameters == {"k": 3}


UNKNOWN_FIELDS = [
    vint(20, 2**64 - 1),
    f32(21, 1.0),
    f64(22, 1.0),
    ld(23, b"\xff\xfe not utf-8"),
    group(24, vint(1, 1) + ld(2, b"x") + group(3, f32(4, 0))),
    nested_groups(50),
    key(2**29 - 1, 0) + varint(1),
]


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS, ids=range(len(UNKNOWN_FIELDS)))
def test_unknown_fields_are_skipped_at_every_level(codec, unknown):
    u = unknown
    param = ld(4, entry(b"k", u + vint(2, 1) + u))
    buf = (
        u + ld(1, b"m") + u + param
        + ld(5, u + ld(1, b"in") + u + ld(4, entry(b"p", u + ld(3, b"v"))) + ld(5, u + vint(3, 1) + u) + u)
        + ld(6, u + ld(1, b"out") + u)
        + ld(7, b"raw") + u
    )
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    assert req.model_name == "m" and req.parameters == {"k": 1}
    assert req.inputs[0].name == "in" and req.inputs[0].parameters == {"p": "v"}
    assert req.inputs[0].contents["int64_contents"].tolist() == [1]
    assert req.outputs[0].name == "out" and bytes(req.raw_input_contents[0]) == b"raw"


def test_wrong_wire_types_are_unknown_fields(codec):
    buf = (
        vint(1, 5) + f32(2, 1.0) + vint(7, 3) + vint(5, 1) + group(6)
        + ld(5, vint(1, 1) + f64(3, 1.0) + vint(5, 1) + ld(5, vint(6, 1) + f64(6, 1) + f32(7, 1) + vint(8, 1)))
        + ld(4, entry(b"k", ld(1, b"\x01") + f64(2, 1.0) + vint(4, 1) + vint(3, 1)))
    )
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    assert req.model_name == "" and len(req.inputs) == 1
    assert req.outputs == [] and req.raw_input_contents == []
    assert req.inputs[0].contents == {} and req.inputs[0].shape == ()
    assert req.parameters == {"k": None}


def test_group_nesting_limit_matches_upb(codec):
    # upb allows messages and groups nested 100 deep below the top-level message
    decode(codec, nested_groups(100))
    decode(codec, ld(5, nested_groups(99)))
    decode(codec, ld(5, ld(4, entry(b"k", nested_groups(97)))))
    for buf in (nested_groups(101), ld(5, nested_groups(100)), ld(5, ld(4, entry(b"k", nested_groups(98))))):
        with pytest.raises(InvalidArgument):
            codec.decode_infer_request(buf)


def test_empty_tensors(codec):
    buf = ld(5, ld(1, b"e") + ld(3, b"") + ld(5, ld(6, b"") + ld(2, b"") + ld(8, b""))) + ld(7, b"")
    req = codec.decode_infer_request(buf)
    decode(codec, buf)
    assert req.inputs[0].shape == () and req.inputs[0].contents == {"bytes_contents": [b""]}
    assert bytes(req.raw_input_contents[0]) == b""


# --- hostile inputs -------------------------------------------------------------------------------------


def _valid_chunks() -> list[bytes]:
    """full_request() as its top-level fields serialized one by one: cuts between them are valid."""
    msg = full_request()
    chunks = [
        pb.ModelInferRequest(**{name: getattr(msg, name)}).SerializeToString()
        for name in ("model_name", "model_version", "id")
    ]
    for k, value in msg.parameters.items():
        one = pb.ModelInferRequest()
        one.parameters[k].CopyFrom(value)
        chunks.append(one.SerializeToString())
    for field in ("inputs", "outputs"):
        for item in getattr(msg, field):
            one = pb.ModelInferRequest()
            getattr(one, field).add().CopyFrom(item)
            chunks.append(one.SerializeToString())
    for raw in msg.raw_input_contents:
        chunks.append(pb.ModelInferRequest(raw_input_contents=[raw]).SerializeToString())
    return chunks


def test_truncated_at_every_byte(codec):
    chunks = _valid_chunks()
    buf = b"".join(chunks)
    assert pb.ModelInferRequest.FromString(buf) == full_request()
    boundaries = {0}
    for c in chunks:
        boundaries.add(max(boundaries) + len(c))
    twin = load_codec("twin")
    for cut in range(len(buf)):
        prefix = buf[:cut]
        if cut in boundaries:
            got = normalize(codec.decode_infer_request(prefix))
            assert got == normalize(twin.decode_infer_request(prefix))
        else:
            with pytest.raises(InvalidArgument, match="^malformed ModelInferRequest:"):
                codec.decode_infer_request(prefix)


HOSTILE = {
    "field number 0": b"\x00\x01",
    "field number 0 end-group": b"\x04",
    "wire type 6": key(9, 6),
    "wire type 7": key(9, 7) + b"\x00" * 8,
    "tag of 6 bytes": b"\x88\x80\x80\x80\x80\x00\x01",
    "tag of 2**32 or more": b"\x88\x80\x80\x80\x70\x01",
    "varint of 11 bytes": key(9, 0) + b"\xff" * 10 + b"\x01",
    "truncated varint": key(9, 0) + b"\xff\xff",
    "truncated tag": b"\x88",
    "varint crossing the end of its message": ld(5, key(3, 0) + b"\x80") + b"\x01",
    "11-byte varint in packed field": ld(5, ld(3, b"\xff" * 10 + b"\x01")),
    "truncated varint in packed field": ld(5, ld(5, ld(2, b"\x01\x80"))),
    "length 2**31": key(1, 2) + varint(2**31) + b"x",
    "length 2**31 - 1": key(1, 2) + varint(2**31 - 1) + b"x",
    "length 2**63": key(7, 2) + varint(2**63) + b"x",
    "negative length": key(7, 2) + varint(-1) + b"x",
    "negative 32-bit length": key(7, 2) + varint(-(2**31)) + b"x",
    "length past the end": ld(7, b"abcd")[:-1],
    "length past the end of its message": ld(5, key(1, 2) + varint(5) + b"ab") + b"cdefgh",
    "unknown length past the end": key(9, 2) + varint(2**30),
    "bad UTF-8 in model_name": ld(1, b"\xff"),
    "bad UTF-8 in model_version": ld(2, b"ok\xc3"),
    "bad UTF-8 in id": ld(3, b"\x80"),
    "surrogate in model_name": ld(1, b"\xed\xa0\x80"),
    "overlong UTF-8": ld(1, b"\xc0\xaf"),
    "code point above U+10FFFF": ld(1, b"\xf4\x90\x80\x80"),
    "bad UTF-8 in a repeat that loses": ld(1, b"\xff") + ld(1, b"fine"),
    "bad UTF-8 in parameter name": ld(4, entry(b"\xfe", vint(1, 1))),
    "bad UTF-8 in string_param": ld(4, entry(b"k", ld(3, b"\xe2\x82"))),
    "bad UTF-8 in input name": ld(5, ld(1, b"\xff")),
    "bad UTF-8 in datatype": ld(5, ld(2, b"FP\xff")),
    "bad UTF-8 in input parameter": ld(5, ld(4, entry(b"\xff"))),
    "bad UTF-8 in output name": ld(6, ld(1, b"\xff")),
    "bad UTF-8 in output parameter": ld(6, ld(2, entry(b"k", ld(3, b"\xff")))),
    "bad UTF-8 in a dropped map entry": ld(4, entry(b"\xff", None, vint(3, 1))),
    "stray end-group": key(9, 4),
    "end-group in an input": ld(5, key(9, 4)),
    "end-group in contents": ld(5, ld(5, key(6, 4))),
    "end-group in a map entry": ld(4, entry(b"k") + key(1, 4)),
    "end-group in a parameter": ld(4, entry(b"k", key(2, 4))),
    "mismatched end-group": key(9, 3) + key(10, 4),
    "unclosed group": key(9, 3) + vint(1, 1),
    "group closed outside its message": ld(5, key(9, 3)) + key(9, 4),
    "groups nested 101 deep": nested_groups(101),
    "truncated fixed32": key(9, 5) + b"abc",
    "truncated fixed64": key(9, 1) + b"abcdefg",
    "truncated fp32 element": ld(5, ld(5, key(6, 5) + b"ab")),
    "truncated fp64 element": ld(5, ld(5, key(7, 1) + b"abcdef")),
    "truncated double_param": ld(4, entry(b"k", key(4, 1) + b"abc")),
    "packed fp32 not a multiple of 4": ld(5, ld(5, ld(6, b"\x00" * 5))),
    "packed fp64 not a multiple of 8": ld(5, ld(5, ld(7, b"\x00" * 12))),
    "gigabyte raw contents": key(7, 2) + varint(3 * 2**30) + b"\x00" * 16,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_are_rejected(codec, name):
    buf = HOSTILE[name]
    with pytest.raises(InvalidArgument, match="^malformed ModelInferRequest:") as info:
        codec.decode_infer_request(buf)
    if codec.name == "ext":
        assert " at byte " in str(info.value)


def test_error_names_fault_and_offset():
    ext = load_codec("ext")
    with pytest.raises(InvalidArgument, match=r"invalid UTF-8 in input name \(field at byte 6\) at byte 9$"):
        ext.decode_infer_request(ld(1, b"ok") + ld(5, ld(1, b"a\xff")))
    with pytest.raises(InvalidArgument, match=r"length 9223372036854775808 is 2 GiB or more at byte 1$"):
        ext.decode_infer_request(HOSTILE["length 2**63"])
    with pytest.raises(InvalidArgument, match=r"closes the group of field 9 at byte 1$"):
        ext.decode_infer_request(HOSTILE["mismatched end-group"])


LARGE = 70_000  # elements: past the extension's 64 KiB threshold, where it walks contents without the GIL


def _large_contents(extra: bytes = b"") -> bytes:
    varints = b"".join(varint(i % 300) for i in range(LARGE))  # one- and two-byte varints
    return ld(3, varints) + extra + ld(8, b"x" * LARGE) + vint(3, 7)


@pytest.mark.parametrize("extra", [b"", vint(12, 5), f32(3, 1.0)], ids=["plain", "unknown-field", "wrong-wire-type"])
def test_large_contents_are_counted_and_decoded_like_small(codec, extra):
    """What the check sees and what is decoded agree with protobuf, on the nogil walk and its fallback."""
    buf = ld(1, b"m") + ld(5, ld(1, b"in") + ld(5, _large_contents(extra)))
    seen = []
    req = codec.decode_infer_request(buf, lambda counted: seen.extend((t.name, c) for t, c in counted))
    assert seen == [("in", {"int64_contents": LARGE + 1, "bytes_contents": 1})]
    assert req.inputs[0].contents["int64_contents"][-3:].tolist() == [(LARGE - 2) % 300, (LARGE - 1) % 300, 7]
    decode(codec, buf)


def test_large_contents_fault_is_raised_before_the_check(codec):
    """A varint over 10 bytes at the end of a large packed run: a malformed request, the check never runs."""
    buf = ld(5, ld(1, b"in") + ld(5, ld(3, b"\x01" * LARGE + b"\x80" * 11 + b"\x01")))
    with pytest.raises(InvalidArgument, match="^malformed ModelInferRequest:") as info:
        codec.decode_infer_request(buf, lambda counted: pytest.fail("check ran on a malformed request"))
    if codec.name == "ext":
        assert str(info.value).endswith(f"varint longer than 10 bytes at byte {LARGE + 16}")  # where it starts


# --- encoding -------------------------------------------------------------------------------------------


def _parsed(cls, data: bytes):
    assert type(data) is bytes
    msg = cls.FromString(data)
    return msg, msg.SerializeToString(deterministic=True)


def assert_same_response(resp: InferResponse) -> None:
    ext, twin = load_codec("ext"), load_codec("twin")
    a, a_det = _parsed(pb.ModelInferResponse, ext.encode_infer_response(resp))
    b, b_det = _parsed(pb.ModelInferResponse, twin.encode_infer_response(resp))
    assert a_det == b_det  # map order aside, the same message (bit-exact, NaN-safe)
    assert a == b or any(np.isnan(x) for o in b.outputs for x in o.contents.fp32_contents)


def _array_for(name: str, shape=(2, 3)) -> np.ndarray:
    n = int(np.prod(shape))
    if name == "BYTES":
        return np.array([b"x" * i if i % 2 else "é" * i for i in range(n)], dtype=object).reshape(shape)
    if name == "BF16":
        return np.arange(n, dtype=np.uint16).reshape(shape)
    dt = DATATYPES[name].numpy
    if dt.kind == "b":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        vals = [int(info.min), int(info.max), 0, 1, int(info.max) // 3, int(info.min) // 3]
        return np.array((vals * n)[:n], dtype=dt).reshape(shape)
    return (np.arange(n) * -1.25).astype(dt).reshape(shape)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("name", sorted(DATATYPES))
def test_encode_every_datatype(name, raw):
    resp = InferResponse("m", "1", "id", [OutputTensor("out", name, (2, 3), _array_for(name))], raw=raw)
    if not raw and DATATYPES[name].contents_field is None:  # FP16, BF16 travel raw only
        for codec in (load_codec("ext"), load_codec("twin")):
            with pytest.raises(InvalidArgument, match="no typed contents field"):
                codec.encode_infer_response(resp)
        return
    assert_same_response(resp)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_encode_many_outputs_and_parameters(raw):
    outputs = [
        # not contiguous: the codec must lay it out row-major
        OutputTensor("fp32", "FP32", (2, 2), np.arange(4, dtype=np.float32).reshape(2, 2).T),
        OutputTensor("fp16", "FP16", (3,), np.array([1, -2, 65504], np.float16)),
        OutputTensor("bytes", "BYTES", (3,), np.array(["ü", b"", b"\x00"], dtype=object)),
        OutputTensor("bool", "BOOL", (2,), np.array([True, False])),
        OutputTensor("empty", "INT64", (0,), np.zeros(0, np.int64)),
        OutputTensor("empty_bytes", "BYTES", (0,), np.zeros(0, dtype=object)),
        OutputTensor("scalar", "INT32", (), np.array(-7, np.int32)),
        OutputTensor("", "UINT8", (1,), np.array([255], np.uint8)),
        OutputTensor("upcast", "FP64", (2,), np.array([1, 2], np.int8)),
    ]
    if not raw:
        outputs = [o for o in outputs if o.datatype != "FP16"]
    params = {
        "b": True, "f": False, "i": -5, "zero": 0, "big": 2**63, "umax": 2**64 - 1, "imin": -(2**63),
        "d": 0.1, "s": "ünï", "empty": "", "none": None, "np_int": np.int64(3), "np_float": np.float64(2.5),
        "bytes": b"x", "": 1,
    }
    assert_same_response(InferResponse("mödel", "", "", outputs, params, raw))


def test_encode_empty_response():
    assert_same_response(InferResponse("", "", "", []))
    assert load_codec("ext").encode_infer_response(InferResponse("", "", "", [])) == b""


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_encode_empty_multidimensional_output(raw):
    # The twin cannot do raw here (tensors.raw_from_array: memoryview.cast refuses a (0, 4) array),
    # so the extension is held to the message protobuf builds.
    resp = InferResponse("m", "", "", [OutputTensor("e", "FP32", (0, 4), np.zeros((0, 4), np.float32))], raw=raw)
    want = pb.ModelInferResponse(model_name="m")
    t = want.outputs.add(name="e", datatype="FP32", shape=[0, 4])
    if raw:
        want.raw_output_contents.append(b"")
    else:
        t.contents.SetInParent()
    assert pb.ModelInferResponse.FromString(load_codec("ext").encode_infer_response(resp)) == want
    if not raw:
        assert_same_response(resp)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_encode_outputs_written_elsewhere(raw):
    """An output written into shared memory: its name, datatype and shape, an empty raw_output_contents entry
    in raw form (as Triton sends, which perf_analyzer needs) and no contents in typed form; its data is never
    read (a BF16 array that typed form could not carry, or None). Raw entries stay in output order."""
    outputs = [
        OutputTensor("a", "FP32", (1, 2), np.array([[1.0, 2.0]], np.float32)),
        OutputTensor("shm", "FP32", (2, 16), None, elsewhere=True),
        OutputTensor("shm_bf16", "BF16", (4,), np.zeros(4, np.uint16), elsewhere=True),
        OutputTensor("b", "INT64", (1,), np.array([7], np.int64)),
    ]
    resp = InferResponse("m", "1", "id", outputs, {"p": 1}, raw)
    assert_same_response(resp)
    msg = pb.ModelInferResponse.FromString(load_codec("ext").encode_infer_response(resp))
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("a", "FP32", [1, 2]), ("shm", "FP32", [2, 16]), ("shm_bf16", "BF16", [4]), ("b", "INT64", [1])]
    assert not msg.outputs[1].HasField("contents") and not msg.outputs[2].HasField("contents")
    if raw:
        assert list(msg.raw_output_contents) == [outputs[0].data.tobytes(), b"", b"", outputs[3].data.tobytes()]
    else:
        assert not msg.raw_output_contents and list(msg.outputs[3].contents.int64_contents) == [7]
    stream = pb.ModelStreamInferResponse.FromString(load_codec("ext").encode_stream_response(resp))
    assert stream.infer_response == msg
    assert load_codec("twin").encode_stream_response(resp) == load_codec("ext").encode_stream_response(resp) or \
        pb.ModelStreamInferResponse.FromString(load_codec("twin").encode_stream_response(resp)) == stream


def test_encode_large_raw_output_is_exact():
    data = np.random.default_rng(0).random((256, 1024), dtype=np.float32)
    resp = InferResponse("m", "1", "", [OutputTensor("y", "FP32", data.shape, data)])
    out = load_codec("ext").encode_infer_response(resp)
    msg = pb.ModelInferResponse.FromString(out)
    assert msg.raw_output_contents[0] == data.tobytes()
    assert out == load_codec("twin").encode_infer_response(resp)  # no maps: even the bytes agree


@pytest.mark.parametrize(
    ("resp_kw", "exc"),
    [
        ({"parameters": {"x": 2**64}}, ValueError),
        ({"parameters": {"x": -(2**63) - 1}}, ValueError),
        ({"parameters": {"x": "\ud800"}}, UnicodeEncodeError),
        ({"parameters": {1: 1}}, TypeError),
        ({"model_name": "\udcff"}, UnicodeEncodeError),
        ({"model_name": b"\xff"}, UnicodeDecodeError),
        ({"id": 5}, TypeError),
        ({"outputs": [OutputTensor("o", "NOPE", (1,), np.zeros(1))]}, KeyError),
        ({"outputs": [OutputTensor("o", "FP32", (1.0,), np.zeros(1))]}, TypeError),
        ({"outputs": [OutputTensor("o", "FP32", (2**63,), np.zeros(1))]}, ValueError),
    ],
)
def test_encode_rejects_what_protobuf_rejects(resp_kw, exc):
    resp = InferResponse(**{"model_name": "m", "model_version": "", "id": "", "outputs": [], **resp_kw})
    for codec in (load_codec("ext"), load_codec("twin")):
        with pytest.raises(exc):
            codec.encode_infer_response(resp)


@pytest.mark.parametrize("error", ["", "model 'x' failed: ünïcode"])
@pytest.mark.parametrize("with_response", [True, False])
def test_encode_stream_response(error, with_response):
    resp = None
    if with_response:
        data = np.array([[1, 2]], np.int32)
        resp = InferResponse("m", "2", "rid", [OutputTensor("o", "INT32", (1, 2), data)], {"p": 1.5})
    ext, twin = load_codec("ext"), load_codec("twin")
    a, a_det = _parsed(pb.ModelStreamInferResponse, ext.encode_stream_response(resp, error))
    b, b_det = _parsed(pb.ModelStreamInferResponse, twin.encode_stream_response(resp, error))
    assert a == b and a_det == b_det
    assert a.HasField("infer_response") == with_response and a.error_message == error


def test_encode_stream_response_defaults():
    typed = InferResponse("", "", "", [OutputTensor("o", "BOOL", (1,), np.array([True]))], raw=False)
    results = []
    for codec in (load_codec("ext"), load_codec("twin")):
        assert codec.encode_stream_response(None) == b""
        assert codec.encode_stream_response(InferResponse("", "", "", [])) == b"\x12\x00"
        results.append(pb.ModelStreamInferResponse.FromString(codec.encode_stream_response(typed, "e")))
    assert results[0] == results[1]


def test_extension_fills_every_field_and_owns_its_references():
    """The extension writes the message slots by hand (no __init__): every dataclass field must be set, and
    each container it built must be referenced by its slot alone (a missing or extra reference shows)."""
    import dataclasses
    import gc
    import sys

    ext, twin = load_codec("ext"), load_codec("twin")
    req = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    req.parameters["p"].int64_param = 7
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.parameters["q"].bool_param = True
    req.outputs.add(name="y").parameters["binary_data"].bool_param = False
    req.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    data = req.SerializeToString()
    for _ in range(2000):  # churn: a reference error would free or leak these
        ext.decode_infer_request(data)
    gc.collect()
    decoded = ext.decode_infer_request(data)
    for obj in (decoded, *decoded.inputs, *decoded.outputs):
        for f in dataclasses.fields(obj):
            kind = type(getattr(obj, f.name))  # AttributeError if a slot was left empty
            refs = sys.getrefcount(getattr(obj, f.name))  # the slot, and getrefcount's own argument
            if kind in (dict, list):
                assert refs == 2, (type(obj).__name__, f.name, refs)
    assert normalize(decoded) == normalize(twin.decode_infer_request(data))
