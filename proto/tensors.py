"""Conversions between wire tensor data (raw bytes or typed contents) and numpy arrays.

Raw tensors become views of the buffer they arrived in (``np.frombuffer``), never copies; the one
exception is BYTES, whose length-prefixed elements have to be split into Python objects. Every check
compares sizes derived from the declared shape with the bytes that actually arrived before anything
is allocated, so a hostile shape cannot make the server allocate more than the message holds.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from tensorwire.errors import InvalidArgument
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES, DATATYPES, Datatype

_U32 = struct.Struct("<I")


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape that has already been checked to be non-negative."""
    return math.prod(shape) if shape else 1


def format_shape(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def datatype(name: str, tensor: str) -> Datatype:
    try:
        return DATATYPES[name]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InvalidArgument(f"{tensor}: unknown datatype '{name}'; expected one of {known}") from None


def deserialize_bytes_tensor(buf, count: int, tensor: str) -> np.ndarray:
    """Split raw BYTES data (4-byte little-endian length, then the bytes, per element)."""
    mv = memoryview(buf).cast("B")
    items: list[bytes] = []
    offset, end = 0, len(mv)
    while offset < end:
        if end - offset < 4:
            raise InvalidArgument(
                f"{tensor}: BYTES raw data is truncated: element {len(items)} has {end - offset} bytes "
                "left where a 4-byte length prefix was expected"
            )
        (length,) = _U32.unpack_from(mv, offset)
        offset += 4
        if length > end - offset:
            raise InvalidArgument(
                f"{tensor}: BYTES element {len(items)} declares {length} bytes but only "
                f"{end - offset} remain in the raw data"
            )
        items.append(bytes(mv[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise InvalidArgument(
            f"{tensor}: BYTES raw data holds {len(items) if len(items) <= count else 'more than ' + str(count)} "
            f"elements but the shape needs {count}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Raw BYTES form of an array of bytes/str objects (str is encoded as UTF-8)."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def array_from_raw(buf, dt: Datatype, shape: tuple[int, ...], tensor: str) -> np.ndarray:
    """The array a raw_input_contents entry holds, as a view of ``buf`` where the layout allows."""
    count = element_count(shape)
    if dt.name == "BYTES":
        return deserialize_bytes_tensor(buf, count, tensor).reshape(shape)
    nbytes = memoryview(buf).nbytes
    expected = count * dt.itemsize
    if nbytes != expected:
        raise InvalidArgument(
            f"{tensor}: raw_input_contents holds {nbytes} bytes, but shape {format_shape(shape)} of "
            f"{dt.name} needs {expected} bytes ({count} elements x {dt.itemsize} bytes)"
        )
    if dt.numpy is None:
        raise InvalidArgument(f"{tensor}: datatype {dt.name} is not supported by this server's runtime")
    arr = np.frombuffer(buf, dtype=dt.numpy, count=count)
    if dt.name == "BOOL" and count and arr.view(np.uint8).max() > 1:
        raise InvalidArgument(f"{tensor}: BOOL raw data must hold only bytes 0 and 1")
    return arr.reshape(shape)


def check_contents_counts(counts: dict[str, int], dt: Datatype, shape: tuple[int, ...], tensor: str) -> int:
    """The element count of typed contents given as {field: count}, checked against the datatype's field
    and the shape; the codecs call it (via the server's check) before decoding a single element."""
    if dt.contents_field is None:
        raise InvalidArgument(
            f"{tensor}: datatype {dt.name} has no typed contents field; send it in raw_input_contents"
        )
    wrong = [f for f in counts if f != dt.contents_field]
    if wrong:
        raise InvalidArgument(
            f"{tensor}: datatype {dt.name} expects contents in '{dt.contents_field}', got {', '.join(wrong)}"
        )
    got = counts.get(dt.contents_field, 0)
    count = element_count(shape)
    if got != count:
        raise InvalidArgument(
            f"{tensor}: {dt.contents_field} holds {got} elements but shape {format_shape(shape)} needs {count}"
        )
    return count


def array_from_contents(contents: dict, dt: Datatype, shape: tuple[int, ...], tensor: str) -> np.ndarray:
    """The array typed InferTensorContents hold, converted to the tensor's datatype."""
    count = check_contents_counts({f: len(v) for f, v in contents.items()}, dt, shape, tensor)
    values = contents.get(dt.contents_field)
    if dt.name == "BYTES":
        arr = np.empty(count, dtype=object)
        if count:
            arr[:] = list(values)
        return arr.reshape(shape)
    arr = np.asarray(values, dtype=CONTENTS_FIELD_DTYPES[dt.contents_field])
    if arr.dtype != dt.numpy:
        info = np.iinfo(dt.numpy) if dt.numpy.kind in "iu" else None
        if info is not None and count and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidArgument(
                f"{tensor}: {dt.contents_field} has values outside the range of {dt.name} "
                f"[{info.min}, {info.max}]"
            )
        arr = arr.astype(dt.numpy)
    return arr.reshape(shape)


def raw_from_array(arr: np.ndarray, dt: Datatype):
    """A buffer holding the raw wire form of ``arr`` (a view where the array is already contiguous)."""
    if dt.name == "BYTES":
        return serialize_bytes_tensor(arr)
    arr = np.ascontiguousarray(arr, dtype=dt.numpy)
    return memoryview(arr.reshape(-1)).cast("B")  # reshape: memoryview.cast rejects empty N-d arrays


def contents_from_array(arr: np.ndarray, dt: Datatype) -> tuple[str, np.ndarray | list]:
    """The typed-contents field and values for ``arr`` (for clients that ask for typed outputs)."""
    if dt.contents_field is None:
        raise InvalidArgument(f"output datatype {dt.name} has no typed contents field; ask for raw output")
    flat = arr.reshape(-1)
    if dt.name == "BYTES":
        return dt.contents_field, [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in flat]
    return dt.contents_field, flat.astype(CONTENTS_FIELD_DTYPES[dt.contents_field])
