"""Comparable forms of decoded requests, shared by the codec tests: both codecs and protobuf itself are
reduced to plain tuples (buffers as bytes, floats as bit patterns) so results compare exactly."""

from __future__ import annotations

import struct

import numpy as np

from tensorwire.bench.memory import varint  # one varint encoder, for the bench and the tests
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def _value(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))  # bit-exact, NaN-safe
    assert type(v) is str, type(v)
    return ("str", v)


def _array(values: np.ndarray) -> tuple:
    """Bytes of a decoded array; NaNs compare as NaN (the twin quiets signaling fp32 NaNs, see _wire)."""
    if values.dtype.kind == "f":
        values = np.where(np.isnan(values), np.nan, values).astype(values.dtype)
    return (values.dtype.str, values.tobytes())


def _params(p: dict) -> list:
    assert type(p) is dict
    return sorted((k, _value(v)) for k, v in p.items())


def _contents(c: dict) -> dict:
    out = {}
    for name, values in c.items():
        if name == "bytes_contents":
            assert type(values) is list and all(type(x) is bytes for x in values)
            out[name] = ("bytes", list(values))
        else:
            assert isinstance(values, np.ndarray) and values.ndim == 1
            assert values.dtype == CONTENTS_FIELD_DTYPES[name]
            out[name] = _array(values)
    return out


def normalize(req) -> tuple:
    """A type-exact comparable form of an InferRequest (buffers as bytes, floats as bit patterns)."""
    for s in (req.model_name, req.model_version, req.id):
        assert type(s) is str
    inputs = []
    for t in req.inputs:
        assert type(t.name) is str and type(t.datatype) is str
        assert type(t.shape) is tuple and all(type(d) is int for d in t.shape)
        inputs.append((t.name, t.datatype, t.shape, _params(t.parameters), _contents(t.contents)))
    return (
        req.model_name,
        req.model_version,
        req.id,
        _params(req.parameters),
        inputs,
        [(o.name, _params(o.parameters)) for o in req.outputs],
        [bytes(memoryview(r)) for r in req.raw_input_contents],
    )


def from_pb(msg) -> tuple:
    """The normalized form of a protobuf ModelInferRequest message: the reference result."""

    def params(pmap):
        out = []
        for k, p in pmap.items():
            which = p.WhichOneof("parameter_choice")
            out.append((k, _value(getattr(p, which)) if which else None))
        return sorted(out)

    def contents(c):
        out = {}
        for fd, values in c.ListFields():
            if fd.name == "bytes_contents":
                out[fd.name] = ("bytes", list(values))
            else:
                out[fd.name] = _array(np.array(list(values), dtype=CONTENTS_FIELD_DTYPES[fd.name]))
        return out

    return (
        msg.model_name,
        msg.model_version,
        msg.id,
        params(msg.parameters),
        [
            (t.name, t.datatype, tuple(t.shape), params(t.parameters), contents(t.contents))
            for t in msg.inputs
        ],
        [(o.name, params(o.parameters)) for o in msg.outputs],
        list(msg.raw_input_contents),
    )
