"""Opt-in reduced precision: FP16 weights/compute (FP32 inputs/outputs kept) or INT8 (see quantize.py).

Both change the numbers; the report shows by how much (drift against PyTorch: max abs, max rel, cosine
similarity) and what it buys (size, and latency against the FP32 graph and eager PyTorch on this machine).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tensorwire.export import graph, parity, runtime
from tensorwire.export.errors import ExportError, require
from tensorwire.export.report import ParityCase


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


@dataclass
class PrecisionJob:
    """What the precision step needs from the export: the module, its inputs and the parity plan."""

    mode: str                                   # fp16 | int8
    int8: bool | str
    adapter: Any
    specs: list[Any]
    out_names: list[str]
    plan: list[tuple[str, dict[str, int]]]
    seed: int = 0
    rtol: float | None = None                   # None: report drift, enforce nothing
    atol: float | None = None
    calibration: Any = None


def reduce(model, fp32_session, job: PrecisionJob) -> tuple[Any, dict[str, Any]]:
    """The reduced-precision graph and its record: size, latency vs FP32 and eager, drift against PyTorch."""
    from tensorwire.export import quantize

    feeds = {s.name: parity.to_numpy(s.example) for s in job.specs}
    data = quantize.load_calibration(job.calibration, job.specs) if job.calibration is not None else None
    if job.mode == "fp16":
        served, info = to_fp16(model), {"method": "fp16 weights and compute, fp32 inputs and outputs"}
    elif job.mode == "int8":
        method = quantize.choose_method(job.int8, model)
        randoms = quantize.random_samples(feeds, seed=job.seed + 500) if method == "static" and not data else None
        served, info = quantize.int8(model, feeds, method, data, randoms)
    else:
        raise ExportError(f"unknown precision {job.mode!r} (fp16 or int8)")
    graph.check_model(served)
    sess = runtime.session(served)
    rtol = job.rtol if job.rtol is not None else float("inf")
    atol = job.atol if job.atol is not None else float("inf")
    cases, cosines = _drift_cases(job, sess, rtol, atol)
    t32, tv = runtime.compare_latency_ms(fp32_session, sess, list(feeds), list(feeds.values()))
    eager = eager_latency_ms(job.adapter, [s.example for s in job.specs])
    result = {
        "mode": job.mode, **info, "ok": all(c.ok for c in cases), "rtol": job.rtol, "atol": job.atol,
        "max_abs_drift": max((c.max_abs_diff for c in cases), default=float("nan")),
        "max_rel_drift": max((d.max_rel_diff for c in cases for d in c.outputs), default=float("nan")),
        "min_cosine": min(cosines, default=float("nan")),
        "cases": [{"label": c.label, "max_abs_diff": c.max_abs_diff, "cosine": cos, "ok": c.ok, "error": c.error}
                  for c, cos in zip(cases, cosines)],
        "latency_ms_eager": round(eager, 3), "latency_ms_fp32": round(t32, 3), f"latency_ms_{job.mode}": round(tv, 3),
        "speedup": round(t32 / tv, 3) if tv > 0 else None, "speedup_vs_eager": round(eager / tv, 3) if tv > 0 else None,
        "bytes_fp32": model.ByteSize(), f"bytes_{job.mode}": served.ByteSize(),
        "note": DRIFT_NOTE,
    }
    if data:
        result["validation"] = _drift_on_data(job, sess, data)
    return served, result


DRIFT_NOTE = ("drift is against PyTorch on random inputs; with random weights it shows only the cost of the "
              "arithmetic: check on your data (calibration=... / --calibration file.npz)")


def _drift_cases(job: PrecisionJob, sess, rtol: float, atol: float) -> tuple[list[Any], list[float]]:
    """The parity plan's shapes on fresh inputs: per case the diffs and the lowest output cosine similarity."""
    from tensorwire.export.quantize import cosine

    names = [s.name for s in job.specs]
    cases, cosines = [], []
    for i, (label, sizes) in enumerate(job.plan):
        tensors = parity.inputs_at(job.specs, sizes, job.seed + 1000 + i)
        ref = parity.torch_outputs(job.adapter, tensors)
        got = runtime.run(sess, names, [parity.to_numpy(t) for t in tensors])
        diffs = parity.compare(job.out_names, ref, got, rtol, atol)
        shapes = {s.name: list(t.shape) for s, t in zip(job.specs, tensors)}
        cases.append(ParityCase(label, shapes, diffs, all(d.ok for d in diffs)))
        cosines.append(min((cosine(r, g) for r, g in zip(ref, got)), default=float("nan")))
    return cases, cosines


def _drift_on_data(job: PrecisionJob, sess, data: list[dict[str, Any]]) -> dict[str, Any]:
    """Drift on the user's calibration/validation samples: the figure that means something for real weights."""
    import torch

    from tensorwire.export.quantize import cosine

    worst_abs, worst_cos = 0.0, 1.0
    for feed in data:
        ref = parity.torch_outputs(job.adapter, [torch.from_numpy(feed[s.name]) for s in job.specs])
        got = sess.run(None, feed)
        worst_abs = max(worst_abs, max(float(np.max(np.abs(r - g))) if r.size else 0.0 for r, g in zip(ref, got)))
        worst_cos = min(worst_cos, min(cosine(r, g) for r, g in zip(ref, got)))
    return {"samples": len(data), "max_abs_drift": worst_abs, "min_cosine": worst_cos}


def eager_latency_ms(adapter, tensors: list[Any], runs: int = 7, budget_s: float = 5.0) -> float:
    """Median latency of eager PyTorch on the example (inference_mode), the figure users compare against."""
    import torch

    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    with torch.inference_mode():
        adapter(*tensors)
        while len(times) < runs and (len(times) < 3 or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            adapter(*tensors)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def summary_line(p: dict[str, Any]) -> str:
    mode = p["mode"]
    return (f"{p.get('method', mode)}: drift max abs {p['max_abs_drift']:.3g}, cosine {p['min_cosine']:.5f}; "
            f"latency {p['latency_ms_eager']:.2f} ms eager, {p['latency_ms_fp32']:.2f} ms fp32 -> "
            f"{p[f'latency_ms_{mode}']:.2f} ms {mode}; size {p['bytes_fp32'] / 1e6:.1f} -> "
            f"{p[f'bytes_{mode}'] / 1e6:.1f} MB")


def failure_message(p: dict[str, Any]) -> str:
    lines = [f"{p['mode']} drift exceeds the precision tolerance (rtol={p['rtol']}, atol={p['atol']}):"]
    for c in p["cases"]:
        lines.append(f"  {'ok ' if c['ok'] else 'BAD'} {c['label']:<24} max_abs={c['max_abs_diff']:.3g} "
                     f"cosine={c['cosine']:.5f}" + (f"  {c['error']}" if c["error"] else ""))
    return "\n".join(lines)
