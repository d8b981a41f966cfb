"""The models the benchmarks (and the tests) serve, and the one writer of a model repository.

Each builder returns an ``onnx.ModelProto`` with fixed random weights (seed 0), so two runs serve the same
graph. onnx is imported inside the builders: ``tensorwire --help`` must work on a host without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

OPSET = 17
# One CPU instance, batches up to 8: what the serving benchmarks compare servers with.
CPU_CONFIG = "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"


def _model(nodes: list, name: str, inputs: list, outputs: list, initializers: list = ()) -> onnx.ModelProto:
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _mlp(name: str, dims: list[int]) -> onnx.ModelProto:
    """Gemm + ReLU layers of ``dims`` widths, input 'input' [b, dims[0]], output 'output' [b, dims[-1]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "input"
    layers = len(dims) - 1
    for i in range(layers):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(dims[i + 1], np.float32),
                                                                               f"b{i}")]
        last = i == layers - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["output" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    return _model(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", dims[0]])],
                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", dims[-1]])], inits)


def mlp_model() -> onnx.ModelProto:
    """512 -> 1024 -> 1024 -> 10 with ReLU: the small MLP where the request's cost dominates."""
    return _mlp("mlp", [512, 1024, 1024, 10])


def mlp_large_model() -> onnx.ModelProto:
    """2048 -> 4096 -> 4096 -> 1000: weight-bound, so batching multiplies its throughput."""
    return _mlp("mlp_large", [2048, 4096, 4096, 1000])


def conv_model() -> onnx.ModelProto:
    """[b,3,224,224] FP32 (600 KB) -> Conv 3->16 3x3 pad 1 -> ReLU -> GlobalAveragePool -> [b,16]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["output"], axis=1)]
    return _model(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 224, 224])],
                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 16])],
                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])


def image_model() -> onnx.ModelProto:
    """[b,3,224,224] FP32 -> per-channel mean [b,3]: an image-sized request with little compute."""
    from onnx import TensorProto, helper

    return _model([helper.make_node("ReduceMean", ["pixel_values"], ["channel_mean"], axes=[2, 3], keepdims=0)],
                  "image", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 224, 224])],
                  [helper.make_tensor_value_info("channel_mean", TensorProto.FLOAT, ["b", 3])])


def small_model() -> onnx.ModelProto:
    """[b,512] FP32 (a 2 KB request) -> its mean [b,1]: the request's cost with next to no compute."""
    from onnx import TensorProto, helper

    return _model([helper.make_node("ReduceMean", ["input"], ["output"], axes=[1], keepdims=1)], "small2k",
                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 512])],
                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1])])


def identity_model(name: str, elem: int) -> onnx.ModelProto:
    """INPUT -> OUTPUT of ONNX element type ``elem``, dims [batch, n]: the model holds nothing."""
    from onnx import helper

    return _model([helper.make_node("Identity", ["INPUT"], ["OUTPUT"])], name,
                  [helper.make_tensor_value_info("INPUT", elem, ["batch", "n"])],
                  [helper.make_tensor_value_info("OUTPUT", elem, ["batch", "n"])])


# name -> builder, for the benchmarks that take model names on the command line
BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp_model, "mlp_large": mlp_large_model, "conv": conv_model, "image": image_model, "small2k": small_model,
}


# The request-cost pair the serving benchmarks send: name -> (builder, input name, request shape).
REQUEST_MODELS = {"mlp": (mlp_model, "input", (1, 512)),
                  "image_3x224x224": (image_model, "pixel_values", (1, 3, 224, 224))}


def write_model(repo: Path, name: str, model: onnx.ModelProto | Path, config: str | None = None,
                version: int = 1) -> Path:
    """``repo/name/version/model.onnx`` (a ModelProto saved, or a file hard-linked so that several configs
    share one copy) and ``repo/name/config.pbtxt`` when ``config`` is given; the model's directory."""
    import onnx

    target = repo / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Path):
        if not target.exists():
            os.link(model, target)
    else:
        onnx.save(model, str(target))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def write_repository(repo: Path, models: dict[str, tuple[onnx.ModelProto | Path, str | None]]) -> Path:
    """A model repository of ``{name: (model, config)}``; ``repo``."""
    for name, (model, config) in models.items():
        write_model(repo, name, model, config)
    return repo
