"""Opt-in reduced precision: FP16 weights/compute (FP32 inputs/outputs kept) or dynamic INT8.

Both change the numbers; the report shows by how much (drift against PyTorch) and what it buys
(latency against the FP32 graph on this machine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tensorwire.export.errors import ExportError, require

# Dynamic quantization with ORT's CPU integer kernels: MatMul -> MatMulInteger / DynamicQuantizeMatMul.
# Conv -> ConvInteger has no signed-int8 CPU kernel in ONNX Runtime, so it is left out by default.
INT8_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "Gather"]


def to_fp16(model) -> Any:
    """FP16 graph with FP32 inputs/outputs (casts at the edges), so config.pbtxt and clients don't change."""
    float16 = require("onnxruntime.transformers.float16")
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"FP16 conversion failed: {exc}") from exc
    topological_sort(converted.graph)   # the converter appends its edge casts last; onnx.checker objects
    return converted


def topological_sort(g) -> None:
    """Reorder ``g.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:  # a cycle or a name from an outer scope: keep the remaining order
            ordered += rest
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)


def to_int8(model, op_types: list[str] | None = None) -> Any:
    """Dynamic INT8 quantization (weights int8 offline, activations quantized per call)."""
    import onnx

    quant = require("onnxruntime.quantization")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            quant.quantize_dynamic(str(src), str(dst), weight_type=quant.QuantType.QInt8,
                                   op_types_to_quantize=op_types or INT8_OPS)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"INT8 dynamic quantization failed: {exc}") from exc
        return onnx.load(str(dst))


def convert(model, mode: str) -> Any:
    if mode == "fp16":
        return to_fp16(model)
    if mode == "int8":
        return to_int8(model)
    raise ExportError(f"unknown precision {mode!r} (fp16 or int8)")
