"""INT8 with ONNX Runtime's quantizer: dynamic for transformer-style graphs, static QDQ for convolutional ones.

Dynamic quantization stores MatMul/Gemm/Gather weights as int8 and quantizes activations per call: it
needs no data and suits transformers, whose activation ranges vary per input. Static QDQ fixes the
activation ranges from calibration data so ORT's CPU provider runs QLinearConv / QLinearMatMul; it is the
one that pays for convolutions (ORT's CPU provider has no ConvInteger for signed int8 weights, so dynamic
mode leaves Conv in float). Variants (per-tensor or per-channel weights, ORT's pre-processing) are tried
and kept only where they measure better here; the report lists each one tried.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.export import runtime
from tensorwire.export.errors import ExportError, require

DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "Gather"]
CONV_OPS = {"Conv", "ConvTranspose"}
RANDOM_CALIBRATION_SAMPLES = 8


def choose_method(requested: bool | str, model) -> str:
    """``True``/``"auto"``: static QDQ when the graph convolves, dynamic otherwise."""
    if requested in ("dynamic", "static"):
        return str(requested)
    return "static" if any(n.op_type in CONV_OPS for n in model.graph.node) else "dynamic"


def int8(model, feeds: dict[str, np.ndarray], method: str, calibration: list[dict[str, np.ndarray]] | None,
         random_calibration: list[dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, Any]]:
    """The INT8 graph and how it was made (method, variants tried with their latency and drift vs FP32)."""
    require("onnxruntime.quantization")
    fp32 = runtime.session(model)
    if method == "dynamic":
        return _best(model, feeds, fp32, _dynamic_variants())
    samples = calibration or random_calibration or []
    if not samples:
        raise ExportError("static INT8 needs calibration data: pass calibration=... (CLI --calibration file.npz)")
    variants = [("static QDQ per-channel", dict(per_channel=True, preprocess=False, samples=samples)),
                ("static QDQ per-channel, ORT pre-processing", dict(per_channel=True, preprocess=True,
                                                                    samples=samples))]
    chosen, info = _best(model, feeds, fp32, variants)
    info["calibration"] = (f"{len(samples)} samples from the calibration data" if calibration else
                           f"{len(samples)} random samples like the example (pass --calibration for real data)")
    info["left_in_float"] = unquantized_ops(chosen)
    return chosen, info


def _dynamic_variants() -> list[tuple[str, dict[str, Any]]]:
    return [("dynamic per-tensor", dict(per_channel=False, preprocess=False)),
            ("dynamic per-channel", dict(per_channel=True, preprocess=False)),
            ("dynamic per-channel, ORT pre-processing", dict(per_channel=True, preprocess=True))]


def _best(model, feeds, fp32, variants) -> tuple[Any, dict[str, Any]]:
    """Each variant quantized and measured against FP32; the fastest whose drift is within 1.5x the best's."""
    names = list(feeds)
    arrays = list(feeds.values())
    ref = fp32.run(None, feeds)
    tried, built = [], {}
    for label, kw in variants:
        try:
            q = _quantize(model, **kw)
            sess = runtime.session(q)
            t32, tq = runtime.compare_latency_ms(fp32, sess, names, arrays, runs=9, budget_s=4.0)
        except Exception as exc:  # noqa: BLE001 - the quantizer and ORT raise many types
            tried.append({"variant": label, "ok": False, "error": str(exc).strip().splitlines()[0][:200]
                          if str(exc).strip() else type(exc).__name__})
            continue
        drift = max_abs(ref, sess.run(None, feeds))
        tried.append({"variant": label, "ok": True, "latency_ms_fp32": round(t32, 3), "latency_ms": round(tq, 3),
                      "ratio_to_fp32": round(tq / t32, 3), "max_abs_vs_fp32": drift})
        built[label] = q
    good = [t for t in tried if t["ok"]]
    if not good:
        raise ExportError("INT8 quantization failed in every variant:\n  "
                          + "\n  ".join(f"{t['variant']}: {t['error']}" for t in tried))
    least = min(t["max_abs_vs_fp32"] for t in good)
    fine = [t for t in good if t["max_abs_vs_fp32"] <= 1.5 * least + 1e-12]
    pick = min(fine, key=lambda t: t["ratio_to_fp32"])
    return built[pick["variant"]], {"method": pick["variant"], "variants": tried}


def _quantize(model, per_channel: bool, preprocess: bool, samples: list[dict[str, np.ndarray]] | None = None):
    import onnx

    quant = require("onnxruntime.quantization")
    # ORT's pre-processing and quantizer leave scratch files (sym_shape_infer_temp.onnx, <uuid>.data) in the
    # working directory: run them inside the temporary one.
    with tempfile.TemporaryDirectory() as tmp, _chdir(tmp):
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            src = pre
        if samples is None:
            quant.quantize_dynamic(str(src), str(dst), weight_type=quant.QuantType.QInt8, per_channel=per_channel,
                                   op_types_to_quantize=DYNAMIC_OPS)
        else:
            quant.quantize_static(str(src), str(dst), _Reader(samples), quant_format=quant.QuantFormat.QDQ,
                                  per_channel=per_channel, activation_type=quant.QuantType.QUInt8,
                                  weight_type=quant.QuantType.QInt8,
                                  calibrate_method=quant.CalibrationMethod.MinMax)
        return onnx.load(str(dst))


@contextlib.contextmanager
def _chdir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Reader:
    """ORT's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some calibrators
        pass


def unquantized_ops(model) -> dict[str, int]:
    """Compute nodes of a QDQ graph that no DequantizeLinear feeds: where ORT's CPU kernels stay in float."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear", "Shape", "Constant", "Reshape", "Unsqueeze", "Squeeze",
            "Gather", "Concat", "Cast", "Identity", "Flatten", "Transpose"}
    left = Counter(n.op_type for n in model.graph.node
                   if n.op_type not in skip and not any(i in dq_out for i in n.input))
    return dict(left.most_common())


def max_abs(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(r.astype(np.float64) - np.asarray(g, np.float64)))) if r.size else 0.0
                for r, g in zip(ref, got)), default=0.0)


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Cosine similarity of two outputs, flattened (1.0 for two all-zero outputs)."""
    a, b = ref.astype(np.float64).ravel(), np.asarray(got, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def load_calibration(source: Any, specs: list[Any]) -> list[dict[str, np.ndarray]]:
    """``file.npz`` or ``{input: array}``, one array per input with N samples on axis 0 -> N feeds.

    An array one rank above the example's holds whole requests (``arr[i]``); one of the example's rank
    holds rows of a batch (``arr[i:i+1]``, a request of batch 1).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ExportError(f"calibration file {path} does not exist")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        arrays = {str(k): np.asarray(v) for k, v in dict(source).items()}
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ExportError(f"calibration data has {sorted(arrays)} but the model's inputs are {names}: "
                          f"missing {missing}")
    counts = {len(arrays[n]) for n in names}
    if len(counts) != 1:
        raise ExportError(f"calibration arrays differ in length on axis 0: {[len(arrays[n]) for n in names]}")
    feeds = []
    for i in range(counts.pop()):
        feeds.append({s.name: _sample(arrays[s.name], s, i) for s in specs})
    return feeds


def _sample(arr: np.ndarray, spec: Any, i: int) -> np.ndarray:
    want = str(spec.example.dtype).removeprefix("torch.")
    if str(arr.dtype) != want:
        raise ExportError(f"calibration array {spec.name!r} is {arr.dtype}; the input is {want}")
    rank = spec.example.dim()
    if arr.ndim == rank + 1:
        return np.ascontiguousarray(arr[i])
    if arr.ndim == rank:
        return np.ascontiguousarray(arr[i:i + 1])
    raise ExportError(f"calibration array {spec.name!r} has rank {arr.ndim}; expected {rank} (rows of a batch) "
                      f"or {rank + 1} (whole requests)")


def random_samples(feeds: dict[str, np.ndarray], count: int = RANDOM_CALIBRATION_SAMPLES,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration feeds drawn like ``feeds`` (same shapes, dtypes and value ranges) when no data is given."""
    import torch

    from tensorwire.export.inputs import InputSpec, inputs_at

    specs = [InputSpec(n, torch.from_numpy(np.ascontiguousarray(a))) for n, a in feeds.items()]
    return [{s.name: t.numpy() for s, t in zip(specs, inputs_at(specs, {}, seed + i))} for i in range(count)]
