"""KServe v2 REST bodies <-> the data plane's objects: JSON (and Triton's binary tensor data) in, JSON out.

An HTTP inference request becomes the same :class:`~tensorwire.proto.messages.InferRequest` a gRPC one
decodes to, with every input in ``raw_input_contents``: binary inputs are views into the request body
(``binary_data_size``, Triton's extension), JSON ``data`` is counted against its shape, checked for its
type, and converted into the raw little-endian form once. From there validation, scheduling, statistics and
bounds are the model's, as for gRPC. Outputs leave as JSON ``data`` or as binary after the JSON header, as the
request's ``binary_data_output`` and each output's ``binary_data`` ask.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import json_format

from tensorwire.errors import InvalidArgument, TooLarge
from tensorwire.proto.datatypes import Datatype
from tensorwire.proto.messages import InferRequest, InferResponse, InputTensor, RequestedOutput
from tensorwire.proto.tensors import datatype, format_shape, raw_from_array
from tensorwire.server.request_limits import RequestLimits, check_bytes_elements
from tensorwire.server.validation import BINARY_DATA, BINARY_DATA_OUTPUT

BINARY_DATA_SIZE = "binary_data_size"
# A nested ``data`` array deeper than this is refused before it is walked (a tensor of rank 32 is far beyond
# any model); the JSON parser refuses deeper documents still (RecursionError) before they cost memory.
MAX_DATA_DEPTH = 32
# Numpy kinds a JSON array of each datatype family may parse to (ints are valid floats; nothing else is).
_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def loads(text, what: str):
    """Parse JSON text or bytes; malformed or too deeply nested JSON is the client's error (400)."""
    try:
        return json.loads(bytes(text) if isinstance(text, memoryview) else text)
    except RecursionError:
        raise InvalidArgument(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: malformed JSON: {exc}") from None


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


def message_json(message) -> dict:
    """A protobuf message as Triton's HTTP JSON: proto field names, 64-bit integers as numbers."""
    return _int64_as_numbers(message, json_format.MessageToDict(message, preserving_proto_field_name=True))


def _int64_as_numbers(message, value: dict) -> dict:
    """proto3's JSON writes 64-bit integers as strings; Triton's HTTP answers carry numbers."""
    for fd, field_value in message.ListFields():
        key = fd.name
        if key not in value:
            continue
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                vfd = fd.message_type.fields_by_name["value"]
                if vfd.message_type is not None:
                    value[key] = {k: _int64_as_numbers(field_value[k], value[key][k]) for k in value[key]}
                elif vfd.cpp_type in _INT64:
                    value[key] = {k: int(v) for k, v in value[key].items()}
            elif fd.label == fd.LABEL_REPEATED:
                value[key] = [_int64_as_numbers(m, d) for m, d in zip(field_value, value[key])]
            else:
                value[key] = _int64_as_numbers(field_value, value[key])
        elif fd.cpp_type in _INT64:
            value[key] = [int(v) for v in value[key]] if fd.label == fd.LABEL_REPEATED else int(value[key])
    return value


_INT64 = (json_format.descriptor.FieldDescriptor.CPPTYPE_INT64,
          json_format.descriptor.FieldDescriptor.CPPTYPE_UINT64)


# -- request ----------------------------------------------------------------------------------------------
@dataclass
class HttpInferRequest:
    """A request decoded for the model, and how its outputs go back (name -> binary; None: the default)."""

    request: InferRequest
    binary_default: bool
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be a JSON object")
    for key, v in value.items():
        if not isinstance(v, bool | int | float | str):
            raise InvalidArgument(f"{where}: parameter '{key}' must be a bool, number or string")
    return dict(value)


def _shape(value, where: str) -> tuple[int, ...]:
    """The shape as given, checked before any arithmetic on it: at most MAX_DATA_DEPTH int64 dims (a JSON
    integer may have thousands of digits, and a product of such costs seconds)."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidArgument(f"{where}: 'shape' must be an array of integers")
    if len(value) > MAX_DATA_DEPTH:
        raise InvalidArgument(f"{where}: 'shape' has {len(value)} dimensions, more than {MAX_DATA_DEPTH}")
    if any(not -(2**63) <= d < 2**63 for d in value):
        raise InvalidArgument(f"{where}: 'shape' dimensions must be 64-bit integers")
    return tuple(value)


def parse_infer_request(body: memoryview, header_length: int | None, limits: RequestLimits) -> HttpInferRequest:
    """The request in ``body``: its JSON header (the first ``header_length`` bytes, or all of it), then the
    binary data of the inputs that give ``binary_data_size``, in input order."""
    size = len(body)
    if header_length is None:
        header_length = size
    elif header_length > size:
        raise InvalidArgument(f"Inference-Header-Content-Length {header_length} is larger than the body "
                              f"({size} bytes)")
    if header_length > limits.max_typed_contents_bytes:
        # json.loads makes ~8 bytes of Python objects per byte of numbers: the JSON part is bounded before it is
        # parsed, by the same flag that bounds what typed contents decode to (large tensors travel as binary).
        raise TooLarge(
            f"the JSON part of the request is {header_length} bytes, above this server's bound of "
            f"{limits.max_typed_contents_bytes} (--max-typed-contents-mb); send tensor data as binary data "
            "(binary_data_size)")
    doc = loads(body[:header_length], "inference request")
    if not isinstance(doc, dict):
        raise InvalidArgument("inference request: expected a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inference request: 'inputs' must be a non-empty array")
    params = _parameters(doc.get("parameters"), "inference request")
    binary_default = params.pop(BINARY_DATA_OUTPUT, False) is True
    rid = doc.get("id", "")
    request = InferRequest(id=rid if isinstance(rid, str) else str(rid), parameters=params)
    offset = header_length
    for item in inputs:
        inp, raw, offset = _input(item, body, offset, limits)
        request.inputs.append(inp)
        if raw is not None:
            request.raw_input_contents.append(raw)
    if offset != size:
        raise InvalidArgument(f"the body has {size - offset} bytes of binary data beyond what the inputs' "
                              "binary_data_size account for")
    http = HttpInferRequest(request, binary_default)
    _outputs(doc.get("outputs"), http)
    return http


def _input(item, body: memoryview, offset: int, limits: RequestLimits):
    """(InputTensor, its raw bytes or None when it is in shared memory, the body offset after it)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("inference request: each input must be an object with a 'name'")
    name = item["name"]
    where = f"input '{name}'"
    dt_name = item.get("datatype")
    if not isinstance(dt_name, str):
        raise InvalidArgument(f"{where}: 'datatype' must be a string")
    shape = _shape(item.get("shape"), where)
    params = _parameters(item.get("parameters"), where)
    inp = InputTensor(name, dt_name, shape, params)
    binary_size = params.pop(BINARY_DATA_SIZE, None)
    if binary_size is not None:
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise InvalidArgument(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidArgument(f"{where}: has both 'data' and binary_data_size; send one")
        end = offset + binary_size
        if end > len(body):
            raise InvalidArgument(f"{where}: binary_data_size {binary_size} runs past the end of the body "
                                  f"({len(body) - offset} bytes left)")
        return inp, body[offset:end], end
    if "shared_memory_region" in params:
        if "data" in item:
            raise InvalidArgument(f"{where}: has both 'data' and a shared-memory region; send one")
        return inp, None, offset
    if "data" not in item:
        raise InvalidArgument(f"{where}: no data; send 'data', binary_data_size or a shared-memory region")
    return inp, json_input_bytes(item["data"], datatype(dt_name, where), shape, where, limits), offset


def _flatten(data, shape: tuple[int, ...], where: str) -> list:
    """``data`` (flat, or nested row-major as ``shape``) as a flat list, its element count checked against
    the shape before anything is converted."""
    count = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if count < 0:
        raise InvalidArgument(f"{where}: shape {format_shape(shape)} has a negative dimension")
    if not isinstance(data, list):
        data = [data]
    if len(shape) > MAX_DATA_DEPTH:
        raise InvalidArgument(f"{where}: shape {format_shape(shape)} has more than {MAX_DATA_DEPTH} dimensions")
    if data and isinstance(data[0], list):  # nested: every level as long as its dimension
        level = data
        for depth, dim in enumerate(shape):
            if len(level) != dim:
                raise InvalidArgument(f"{where}: 'data' has {len(level)} elements at depth {depth}, but shape "
                                      f"{format_shape(shape)} says {dim}")
            if depth == len(shape) - 1:
                break
            if not all(isinstance(x, list) for x in level):
                raise InvalidArgument(f"{where}: 'data' is nested less deeply than shape {format_shape(shape)}")
            level = [x for sub in level for x in sub]
        if any(isinstance(x, list) for x in level):
            raise InvalidArgument(f"{where}: 'data' is nested more deeply than shape {format_shape(shape)}")
        data = level
    if len(data) != count:
        raise InvalidArgument(f"{where}: 'data' has {len(data)} elements but shape {format_shape(shape)} holds "
                              f"{count}")
    return data


def json_input_bytes(data, dt: Datatype, shape: tuple[int, ...], where: str, limits: RequestLimits) -> bytes:
    """JSON ``data`` in the raw form the protocol's binary data has (what raw_input_contents carry)."""
    if dt.name == "BYTES":
        # Before a single element is looked at: the count bounds what BYTES cost (docs/resilience.md).
        count = math.prod(shape) if all(d >= 0 for d in shape) else 0
        check_bytes_elements(count, where, limits)
        flat = _flatten(data, shape, where)
        return _bytes_raw(flat, where)
    if dt.numpy is None or dt.name in ("FP16", "BF16"):
        raise InvalidArgument(f"{where}: datatype {dt.name} cannot be sent as JSON 'data'; send it as binary "
                              "data (binary_data_size)")
    flat = _flatten(data, shape, where)  # the count checked against the shape first: a list walk, no copy
    count = len(flat)
    if count * dt.itemsize > limits.max_typed_contents_bytes:
        raise TooLarge(
            f"{where}: JSON 'data' of {count} elements converts to {count * dt.itemsize} bytes, above this "
            f"server's bound of {limits.max_typed_contents_bytes} (--max-typed-contents-mb); send it as binary data")
    try:
        arr = np.array(flat)
    except (ValueError, OverflowError, TypeError) as exc:
        raise InvalidArgument(f"{where}: 'data' is not an array of {dt.name} values: {exc}") from None
    want = dt.numpy
    if flat and arr.dtype.kind not in _KINDS.get(want.kind, ""):
        raise InvalidArgument(f"{where}: 'data' holds {_kind_name(arr.dtype)} but the datatype is {dt.name}")
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        if arr.dtype.kind not in "iu" or arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(f"{where}: 'data' has values outside {dt.name}'s range [{info.min}, {info.max}]")
    return np.ascontiguousarray(arr, dtype=want.newbyteorder("<")).tobytes()


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}.get(
        dtype.kind, f"values of kind {dtype.kind!r}")


def _bytes_raw(flat: list, where: str) -> bytes:
    """BYTES elements (JSON strings) as 4-byte little-endian lengths, each followed by its UTF-8 bytes."""
    parts = []
    for i, s in enumerate(flat):
        if not isinstance(s, str):
            raise InvalidArgument(f"{where}: BYTES element {i} must be a string, got {type(s).__name__}")
        b = s.encode("utf-8", "surrogatepass")
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def _outputs(value, http: HttpInferRequest) -> None:
    """Requested outputs: their parameters for the model, and which of them travel as binary data."""
    if value is None:
        if not http.binary_default:  # every output as JSON: the model refuses those JSON cannot carry
            http.request.parameters[BINARY_DATA_OUTPUT] = False
        return
    if not isinstance(value, list):
        raise InvalidArgument("inference request: 'outputs' must be an array")
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("inference request: each output must be an object with a 'name'")
        name = item["name"]
        params = _parameters(item.get("parameters"), f"output '{name}'")
        binary = params.pop(BINARY_DATA, http.binary_default) is True
        http.binary[name] = binary
        if not binary and "shared_memory_region" not in params:
            params[BINARY_DATA] = False  # typed: the model refuses a datatype JSON cannot carry (FP16, BF16)
        http.request.outputs.append(RequestedOutput(name, params))


# -- response ---------------------------------------------------------------------------------------------
def infer_response(response: InferResponse, http: HttpInferRequest, json_limit: int) -> tuple[bytes, list, int]:
    """(JSON header, binary parts in output order, total binary size) of an inference answer. Outputs asked
    for as JSON carry at most ``json_limit`` bytes of data together (--max-typed-contents-mb, the bound of JSON
    inputs): as Python numbers and text they cost about 8 to 30 times their binary size."""
    _check_json_size(response, http, json_limit)
    outputs = []
    parts: list = []
    binary_size = 0
    for out in response.outputs:
        item: dict = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.elsewhere:  # written into the client's shared-memory region
            item["parameters"] = _shm_parameters(http, out.name)
        elif http.is_binary(out.name):
            raw = raw_from_array(out.data, _dt(out.datatype))
            n = memoryview(raw).nbytes
            item["parameters"] = {BINARY_DATA_SIZE: n}
            parts.append(raw)
            binary_size += n
        else:
            item["data"] = _json_data(out.data, out.datatype)
        outputs.append(item)
    doc: dict = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    return dumps(doc), parts, binary_size


def _check_json_size(response: InferResponse, http: HttpInferRequest, limit: int) -> None:
    as_json = [out for out in response.outputs if not out.elsewhere and not http.is_binary(out.name)]
    size = sum(_data_bytes(out.data) for out in as_json)
    if size > limit:
        names = ", ".join(f"'{out.name}'" for out in as_json)
        raise InvalidArgument(f"output(s) {names} as JSON would carry {size} bytes of data, above this server's bound "
                              f"of {limit} (--max-typed-contents-mb); request them as binary data "
                              '("binary_data": true in the output\'s parameters)')


def _data_bytes(arr) -> int:
    arr = np.asarray(arr)
    if arr.dtype == object:
        return sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in arr.reshape(-1))
    return arr.nbytes


def _dt(name: str) -> Datatype:
    return datatype(name, "output")


def _shm_parameters(http: HttpInferRequest, name: str) -> dict:
    for out in http.request.outputs:
        if out.name == name:
            return {k: v for k, v in out.parameters.items() if k.startswith("shared_memory_")}
    return {}


def _json_data(arr: np.ndarray, dt_name: str) -> list:
    flat = np.asarray(arr).reshape(-1)
    if dt_name == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()
