"""Tiny ONNX graphs built with onnx.helper, and the model repository the server tests run against.

Each model exercises one thing the wire contract must carry: a datatype, several inputs and outputs,
versions, a graph without config.pbtxt, a model that does not batch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
DTYPE_MODELS = {  # model name -> (KServe datatype, ONNX element type)
    "identity_fp32": ("FP32", TensorProto.FLOAT),
    "identity_fp16": ("FP16", TensorProto.FLOAT16),
    "identity_fp64": ("FP64", TensorProto.DOUBLE),
    "identity_int64": ("INT64", TensorProto.INT64),
    "identity_int32": ("INT32", TensorProto.INT32),
    "identity_int8": ("INT8", TensorProto.INT8),
    "identity_uint8": ("UINT8", TensorProto.UINT8),
    "identity_bool": ("BOOL", TensorProto.BOOL),
    "identity_bytes": ("BYTES", TensorProto.STRING),
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def add_sub_model(n: int = 16, offset: float = 0.0) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1 + offset, OUTPUT1 = INPUT0 - INPUT1 (Triton's 'simple' example)."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["SUM"]),
             helper.make_node("Add", ["SUM", "OFFSET"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    graph = helper.make_graph(
        nodes, "add_sub",
        [_vi("INPUT0", f, ["batch", n]), _vi("INPUT1", f, ["batch", n])],
        [_vi("OUTPUT0", f, ["batch", n]), _vi("OUTPUT1", f, ["batch", n])],
        initializer=[helper.make_tensor("OFFSET", f, [], [offset])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def identity_model(elem: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])], "identity",
        [_vi("INPUT", elem, ["batch", "n"])], [_vi("OUTPUT", elem, ["batch", "n"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def row_sum_model() -> onnx.ModelProto:
    """Y[b, 0] = sum of X[b, :]: a large input, a small answer (what tests of request memory want)."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X", "AXES"], ["Y"], keepdims=1)], "row_sum",
        [_vi("X", f, ["batch", "n"])], [_vi("Y", f, ["batch", 1])],
        initializer=[helper.make_tensor("AXES", TensorProto.INT64, [1], [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def cast_model() -> onnx.ModelProto:
    """INT64 token ids and an FP32 mask in; FP32 (ids * mask) and INT64 (ids + 1) out."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["ids_f", "mask"], ["scaled"]),
         helper.make_node("Add", ["ids", "one"], ["next_ids"])],
        "cast",
        [_vi("ids", TensorProto.INT64, ["batch", "seq"]), _vi("mask", TensorProto.FLOAT, ["batch", "seq"])],
        [_vi("scaled", TensorProto.FLOAT, ["batch", "seq"]), _vi("next_ids", TensorProto.INT64, ["batch", "seq"])],
        initializer=[helper.make_tensor("one", TensorProto.INT64, [], [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def fixed_shape_model() -> onnx.ModelProto:
    """No batch dimension: X [2,3] FP32 -> Y = X * 2."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"])], "fixed",
        [_vi("X", f, [2, 3])], [_vi("Y", f, [2, 3])],
        initializer=[helper.make_tensor("two", f, [], [2.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


ADD_SUB_CONFIG = """
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

VERSIONED_CONFIG = """
max_batch_size: 8
version_policy: { all: {} }
"""

FIXED_CONFIG = """
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
"""


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str | None = None, version: int = 1) -> Path:
    _save(model, repo / name / str(version) / "model.onnx")
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def build_test_repository(repo: Path) -> Path:
    """The repository the shared test server serves."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    for name, (_, elem) in DTYPE_MODELS.items():
        write_model(repo, name, identity_model(elem), "max_batch_size: 8\n")
    write_model(repo, "cast", cast_model())  # no config.pbtxt: completed from the graph
    write_model(repo, "fixed", fixed_shape_model(), FIXED_CONFIG)
    write_model(repo, "versioned", add_sub_model(offset=100.0), VERSIONED_CONFIG, version=1)
    write_model(repo, "versioned", add_sub_model(offset=200.0), None, version=2)
    return repo
