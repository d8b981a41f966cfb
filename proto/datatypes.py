"""One table for every datatype name the protocol, the model config, numpy and ONNX Runtime use.

KServe v2 names (``FP32``) travel on the wire; config.pbtxt says ``TYPE_FP32``; ONNX Runtime says
``tensor(float)``; numpy says ``float32``. Every conversion between them goes through ``DATATYPES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str                  # KServe v2 wire name
    config_enum: int           # inference.DataType value in config.pbtxt
    config_name: str           # inference.DataType name
    ort_type: str              # onnxruntime NodeArg.type
    onnx_elem_type: int        # onnx.TensorProto.DataType value
    numpy: np.dtype | None     # None where numpy has no native dtype (BF16)
    contents_field: str | None # InferTensorContents field for typed contents, None: raw only
    itemsize: int              # bytes per element on the wire, 0 for BYTES


def _dt(code: str) -> np.dtype:
    return np.dtype(code)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in [
        Datatype("BOOL", 1, "TYPE_BOOL", "tensor(bool)", 9, _dt("?"), "bool_contents", 1),
        Datatype("UINT8", 2, "TYPE_UINT8", "tensor(uint8)", 2, _dt("u1"), "uint_contents", 1),
        Datatype("UINT16", 3, "TYPE_UINT16", "tensor(uint16)", 4, _dt("<u2"), "uint_contents", 2),
        Datatype("UINT32", 4, "TYPE_UINT32", "tensor(uint32)", 12, _dt("<u4"), "uint_contents", 4),
        Datatype("UINT64", 5, "TYPE_UINT64", "tensor(uint64)", 13, _dt("<u8"), "uint64_contents", 8),
        Datatype("INT8", 6, "TYPE_INT8", "tensor(int8)", 3, _dt("i1"), "int_contents", 1),
        Datatype("INT16", 7, "TYPE_INT16", "tensor(int16)", 5, _dt("<i2"), "int_contents", 2),
        Datatype("INT32", 8, "TYPE_INT32", "tensor(int32)", 6, _dt("<i4"), "int_contents", 4),
        Datatype("INT64", 9, "TYPE_INT64", "tensor(int64)", 7, _dt("<i8"), "int64_contents", 8),
        Datatype("FP16", 10, "TYPE_FP16", "tensor(float16)", 10, _dt("<f2"), None, 2),
        Datatype("FP32", 11, "TYPE_FP32", "tensor(float)", 1, _dt("<f4"), "fp32_contents", 4),
        Datatype("FP64", 12, "TYPE_FP64", "tensor(double)", 11, _dt("<f8"), "fp64_contents", 8),
        Datatype("BYTES", 13, "TYPE_STRING", "tensor(string)", 8, _dt("O"), "bytes_contents", 0),
        Datatype("BF16", 14, "TYPE_BF16", "tensor(bfloat16)", 16, None, None, 2),
    ]
}

BY_CONFIG_ENUM: dict[int, Datatype] = {d.config_enum: d for d in DATATYPES.values()}
BY_ORT_TYPE: dict[str, Datatype] = {d.ort_type: d for d in DATATYPES.values()}
BY_ONNX_ELEM_TYPE: dict[int, Datatype] = {d.onnx_elem_type: d for d in DATATYPES.values()}

# The numpy dtype each typed-contents field decodes to, before conversion to the tensor's datatype.
CONTENTS_FIELD_DTYPES: dict[str, np.dtype] = {
    "bool_contents": np.dtype("?"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
    "bytes_contents": np.dtype("O"),
}


def datatype_of_numpy(dtype: np.dtype) -> Datatype:
    """The wire datatype of a numpy array (object and unicode/bytes arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DATATYPES["BYTES"]
    for d in DATATYPES.values():
        if d.numpy is not None and d.numpy.kind != "O" and d.numpy == dtype.newbyteorder("<"):
            return d
    raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")
