"""The decoded form of ModelInferRequest and the to-be-encoded form of ModelInferResponse.

Both codecs (the Cython extension and its pure-Python twin) produce and consume exactly these plain
objects, so the server never touches protobuf classes on the inference path and tests can compare
the two codecs field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ParamValue = bool | int | str | float
# Typed contents as decoded: field name -> values (a numpy array, or a list of bytes for bytes_contents).
Contents = dict[str, np.ndarray | list]


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    contents: Contents = field(default_factory=dict)  # only non-empty fields


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str = ""
    model_version: str = ""
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    # One buffer per input, in input order. The extension gives views into the request bytes.
    raw_input_contents: list = field(default_factory=list)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # dtype of the datatype; object array of bytes for BYTES
    # True: the data was written elsewhere (a shared-memory region); the response carries the tensor's
    # metadata and, in raw form, an empty raw_output_contents entry, as Triton does.
    elsewhere: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    # False: answer with typed InferTensorContents instead of raw_output_contents (client asked).
    raw: bool = True
