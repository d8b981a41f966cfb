"""Graph clean-up: onnxsim simplification, then ONNX Runtime's offline optimization at a portable level.

Both are kept only when they leave the interface intact (names, dynamic axes) and, for ORT, when they
actually help; otherwise the previous graph is served and the report says why.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.export import graph, runtime
from tensorwire.export.errors import ExportError


@dataclass
class StepOutcome:
    model: Any
    applied: bool
    note: str
    stats: dict[str, Any] = field(default_factory=dict)


def _interface_broken(before, after, dynamic_axes) -> str:
    """Why ``after`` no longer serves like ``before`` (names or dynamic axes changed), or ''."""
    b_in, b_out = graph.io_table(before)
    a_in, a_out = graph.io_table(after)
    if [r["name"] for r in b_in] != [r["name"] for r in a_in] or [r["name"] for r in b_out] != [
        r["name"] for r in a_out
    ]:
        return "input/output names changed"
    for row in a_in + a_out:
        for axis in dynamic_axes.get(row["name"], {}):
            if axis < len(row["dims"]) and isinstance(row["dims"][axis], int):
                return f"dynamic axis {axis} of {row['name']!r} became static ({row['dims'][axis]})"
    return ""


def _same_outputs(before, after, names: list[str], probe: list[np.ndarray]) -> str:
    """Run both graphs on ``probe`` (a non-export shape); '' if they agree, else the reason."""
    try:
        ref = runtime.run(runtime.session(before), names, probe)
        got = runtime.run(runtime.session(after), names, probe)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        return f"fails at another shape: {str(exc).splitlines()[0][:200]}"
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            return f"output shape {g.shape} != {r.shape} at another shape"
        if not np.allclose(r, g, rtol=1e-4, atol=1e-5, equal_nan=True):
            return f"output differs by {float(np.nanmax(np.abs(r.astype(np.float64) - g))):.3g} at another shape"
    return ""


def simplify(model, dynamic_axes, names: list[str], probe: list[np.ndarray] | None) -> StepOutcome:
    """onnxsim; falls back to the input graph (with the reason) on failure or a broken interface."""
    try:
        import onnxsim
    except ImportError:
        return StepOutcome(model, False, "onnxsim is not installed (pip install onnxsim)")
    if model.ByteSize() >= graph.TWO_GB:
        return StepOutcome(model, False, "graph over 2 GB: onnxsim works on in-memory protos only")
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises anything from C++
        return StepOutcome(model, False, f"onnxsim failed: {str(exc).splitlines()[0][:300]}")
    if not ok:
        return StepOutcome(model, False, "onnxsim's own check failed; kept the unsimplified graph")
    why = _interface_broken(model, simplified, dynamic_axes)
    if not why and probe is not None:
        why = _same_outputs(model, simplified, names, probe)
    if why:
        return StepOutcome(model, False, f"simplified graph rejected: {why}; kept the unsimplified graph")
    return StepOutcome(simplified, True, "")


def ort_optimize(model, names: list[str], example: list[np.ndarray], dynamic_axes,
                 level: str = "ORT_ENABLE_BASIC") -> StepOutcome:
    """ORT offline optimization at a portable level (only standard ONNX ops, any provider).

    Kept when it removes nodes without running more than 10% slower, or runs at least 10% faster
    (sub-millisecond timings on a shared machine move by a few percent from run to run).
    """
    import onnx

    if model.ByteSize() >= graph.TWO_GB:
        return StepOutcome(model, False, "graph over 2 GB: offline optimization skipped")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        try:
            runtime.session(model, level=level, optimized_path=out)
            optimized = onnx.load(str(out))
        except Exception as exc:  # noqa: BLE001
            return StepOutcome(model, False, f"ORT optimization failed: {str(exc).splitlines()[0][:300]}")
    why = _interface_broken(model, optimized, dynamic_axes)
    if why:
        return StepOutcome(model, False, f"optimized graph rejected: {why}")
    n_before, n_after = graph.node_count(model), graph.node_count(optimized)
    try:
        t_before, t_after = runtime.compare_latency_ms(runtime.session(model), runtime.session(optimized),
                                                       names, example)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot run the graph: {exc}") from exc
    helps = (n_after < n_before and t_after <= 1.10 * t_before) or t_after <= 0.90 * t_before
    if not helps:
        return StepOutcome(model, False, f"{level} did not help ({n_before}->{n_after} nodes, "
                           f"{t_before:.2f}->{t_after:.2f} ms); serving the simplified graph")
    return StepOutcome(optimized, True, f"{level}: {n_before}->{n_after} nodes, "
                       f"{t_before:.2f}->{t_after:.2f} ms")


def looks_like_transformer(model) -> bool:
    """MatMul, Softmax and a normalization: the pattern ORT's transformer fusions look for."""
    ops = {n.op_type for n in model.graph.node}
    norms = {"LayerNormalization", "ReduceMean", "SimplifiedLayerNormalization"}
    return {"MatMul", "Softmax"} <= ops and bool(ops & norms)


def transformer_fusion(model, names: list[str], example: list[np.ndarray], dynamic_axes,
                       probe: list[np.ndarray] | None) -> StepOutcome:
    """ORT's transformer optimizer (Attention, SkipLayerNorm, BiasGelu... fusions): kept only when the fused
    graph answers the same and measures at least 5% faster; ``stats`` holds its fused-operator counts."""
    if not looks_like_transformer(model) or model.ByteSize() >= graph.TWO_GB:
        return StepOutcome(model, False, "")
    try:
        fused, fused_ops = fuse_transformer(model)
    except Exception as exc:  # noqa: BLE001 - the optimizer raises anything on graphs it does not expect
        note = f"transformer fusions failed: {str(exc).splitlines()[0][:200]}" if str(exc) else "fusions failed"
        return StepOutcome(model, False, note, {"error": note})
    stats: dict[str, Any] = {"fused_operators": fused_ops, "kept": False}
    if not fused_ops:
        return StepOutcome(model, False, "transformer fusions: nothing fused", stats)
    why = _interface_broken(model, fused, dynamic_axes) or (_same_outputs(model, fused, names, probe)
                                                           if probe is not None else "")
    if why:
        return StepOutcome(model, False, f"transformer fusions rejected: {why}", stats | {"rejected": why})
    t_before, t_after = runtime.compare_latency_ms(runtime.session(model), runtime.session(fused), names, example)
    stats |= {"latency_ms_before": round(t_before, 3), "latency_ms_after": round(t_after, 3)}
    counts = ", ".join(f"{k} {v}" for k, v in fused_ops.items())
    if t_after > 0.95 * t_before:
        return StepOutcome(model, False, f"transformer fusions ({counts}) not kept: {t_before:.2f} -> "
                           f"{t_after:.2f} ms", stats)
    stats["kept"] = True
    return StepOutcome(fused, True, f"transformer fusions ({counts}): {t_before:.2f} -> {t_after:.2f} ms", stats)


def fuse_transformer(model) -> tuple[Any, dict[str, int]]:
    """ORT's transformer optimizer on ``model`` (no graph-level optimization): the fused graph, with the
    com.microsoft domain of its fused ops declared (onnx's checker and the quantizer need it), and the
    non-zero counts of ``get_fused_operator_statistics``."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    fused_ops = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    fused = opt.model
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.add(domain="com.microsoft", version=1)
    return fused, fused_ops
