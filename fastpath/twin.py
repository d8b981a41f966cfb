"""The pure-Python codec: the executable specification of the Cython hot path, and its fallback.

It parses and builds messages with the protobuf classes of ``tensorwire.proto``; the extension in
``_wire.pyx`` walks the wire format by hand and must give identical results for every input
(tests/fastpath/test_fastpath_*.py hold them to that).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES, DATATYPES
from tensorwire.proto.messages import (
    InferRequest,
    InferResponse,
    InputTensor,
    ParamValue,
    RequestedOutput,
)
from tensorwire.proto.tensors import contents_from_array, raw_from_array


def _params(pmap) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for key, p in pmap.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def _set_params(pmap, params: dict[str, ParamValue]) -> None:
    for key, value in params.items():
        p = pmap[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value


def _contents(c) -> dict:
    out: dict = {}
    for fd, values in c.ListFields():
        if fd.name == "bytes_contents":
            out[fd.name] = list(values)
        else:
            out[fd.name] = np.array(values, dtype=CONTENTS_FIELD_DTYPES[fd.name])
    return out


# The contents check a caller may pass to decode_infer_request: called once per request that carries
# typed contents, with [(input, {field name: element count}), ...] for those inputs in input order (their
# contents still empty), before any element is decoded; it raises to refuse the request.
ContentsCheck = Callable[[list[tuple[InputTensor, dict[str, int]]]], None]


def _head_class():
    """ModelInferRequest with only fields 1 and 2: parsing it walks the top level and skips the rest."""
    fdp = descriptor_pb2.FileDescriptorProto(name="tensorwire_request_head.proto", package="tensorwire.head",
                                             syntax="proto3")
    msg = fdp.message_type.add(name="ModelInferRequestHead")
    for number, name in ((1, "model_name"), (2, "model_version")):
        msg.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorwire.head.ModelInferRequestHead"))


_Head = _head_class()


def peek_infer_request(buf: bytes) -> tuple[str, str]:
    """(model_name, model_version) of ModelInferRequest wire bytes, without decoding any tensor.

    The server looks the model up with these before paying for the body. Every other field is skipped
    as unknown (length-delimited ones by their length), so this raises only for faults of the top level,
    which decode_infer_request raises for too; a body that peeks cleanly may still fail to decode.
    """
    msg = _Head()
    try:
        msg.ParseFromString(bytes(buf))
    except DecodeError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None
    return msg.model_name, msg.model_version


def decode_infer_request(buf: bytes, check: ContentsCheck | None = None) -> InferRequest:
    """Decode ModelInferRequest wire bytes; ``check`` sees each input's typed-contents counts first.

    The order is the extension's: every structural fault of the message first, then ``check`` once for
    the inputs with typed contents, then the contents are converted.
    """
    msg = pb.ModelInferRequest()
    try:
        msg.ParseFromString(bytes(buf))
    except DecodeError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None
    inputs = [InputTensor(name=t.name, datatype=t.datatype, shape=tuple(t.shape),
                          parameters=_params(t.parameters), contents={}) for t in msg.inputs]
    if check is not None:
        counted = [(inp, {fd.name: len(values) for fd, values in t.contents.ListFields()})
                   for inp, t in zip(inputs, msg.inputs)]
        counted = [(inp, counts) for inp, counts in counted if counts]
        if counted:
            check(counted)
    for inp, t in zip(inputs, msg.inputs):
        inp.contents = _contents(t.contents)
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        parameters=_params(msg.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(name=o.name, parameters=_params(o.parameters)) for o in msg.outputs],
        raw_input_contents=list(msg.raw_input_contents),
    )


def build_infer_response(resp: InferResponse):
    """The ModelInferResponse message for ``resp``."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    _set_params(msg.parameters, resp.parameters)
    for out in resp.outputs:
        t = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.elsewhere:  # written into shared memory: an empty raw entry (as Triton), no typed contents
            if resp.raw:
                msg.raw_output_contents.append(b"")
            continue
        dt = DATATYPES[out.datatype]
        if resp.raw:
            msg.raw_output_contents.append(bytes(raw_from_array(out.data, dt)))
        else:
            field, values = contents_from_array(out.data, dt)
            getattr(t.contents, field).extend(values.tolist() if isinstance(values, np.ndarray) else values)
    return msg


def encode_infer_response(resp: InferResponse) -> bytes:
    """ModelInferResponse wire bytes."""
    return build_infer_response(resp).SerializeToString()


def encode_stream_response(resp: InferResponse | None, error: str = "") -> bytes:
    """ModelStreamInferResponse wire bytes: an answer, or an error message for one stream request."""
    msg = pb.ModelStreamInferResponse(error_message=error)
    if resp is not None:
        msg.infer_response.CopyFrom(build_infer_response(resp))
    return msg.SerializeToString()
