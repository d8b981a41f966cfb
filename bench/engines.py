"""One engine, one model, one batch size, in a process of its own: time it, check it, measure its memory.

``python -m tensorwire.bench.engines JOB.json RESULT.json``. A process per measurement keeps thread
pools from fighting (torch's OpenMP pool and ONNX Runtime's own would otherwise share the cores), makes
peak RSS attributable to one engine, and lets the parent kill a compile that runs away.

Engines: ``eager`` (PyTorch under inference_mode), ``compile`` / ``compile-<mode>`` (torch.compile,
inductor), ``ort`` (session.run), ``ort-iobinding`` (inputs and preallocated outputs bound once),
``ort-int8`` (the graph quantized by tensorwire.export.quantize: dynamic for transformers, static QDQ for
convolutions), and, where ONNX Runtime offers them, ``ort-cuda``, ``ort-cuda-iobinding``, ``ort-cuda-fp16``,
``ort-tensorrt``. Reduced-precision engines pass parity on cosine similarity (REDUCED_MIN_COSINE), not
on rtol/atol.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.bench.stats import summarize
from tensorwire.bench.timing import LoopSettings, measure

CPU_ENGINES = ("eager", "compile", "ort", "ort-iobinding", "ort-int8")
GPU_ENGINES = {"ort-cuda": "CUDAExecutionProvider", "ort-cuda-iobinding": "CUDAExecutionProvider",
               "ort-cuda-fp16": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}
# Reduced-precision engines and the graph variant each runs (bench.prepare writes them).
VARIANTS = {"ort-int8": "int8", "ort-cuda-fp16": "fp16"}
REDUCED_MIN_COSINE = 0.999   # the bar an INT8 export must meet against eager's outputs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MEMORY_METHOD = ("peak RSS of the engine's own process minus its RSS after imports, before the model is loaded "
                 "(weights, compiled code, arenas, activations); the peak is reset after imports where Linux "
                 "allows (/proc/self/clear_refs 5, read back as VmHWM), else getrusage ru_maxrss; torch.compile's "
                 "compile workers are separate processes and not counted")


def available_engines(compile_modes: list[str] | None = None) -> list[str]:
    """The CPU engines, one torch.compile engine per mode, and the GPU providers ONNX Runtime offers here."""
    modes = compile_modes or ["default"]
    engines = ["eager", *("compile" if m == "default" else f"compile-{m}" for m in modes), "ort", "ort-iobinding",
               "ort-int8"]
    try:
        import onnxruntime

        offered = set(onnxruntime.get_available_providers())
    except ImportError:
        offered = set()
    engines += [e for e, provider in GPU_ENGINES.items() if provider in offered]
    return engines


def compile_mode_of(engine: str) -> str | None:
    """``compile`` -> None (torch's default mode), ``compile-max-autotune`` -> "max-autotune"."""
    return engine.removeprefix("compile-") if engine.startswith("compile-") else None


@dataclass
class Prepared:
    """A ready engine: ``call`` runs one inference, ``outputs`` returns the last one's results as numpy."""

    call: Callable[[], Any]
    outputs: Callable[[], list[np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


def _status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def _memory_baseline() -> tuple[float, bool]:
    """(RSS now, whether the peak could be reset): imports done, the model not yet loaded."""
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM: the import's transient peak no longer counts
        reset = True
    except OSError:
        pass
    now = _status_mb("VmRSS")
    return (now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0), reset


def _peak_mb(reset: bool) -> float:
    hwm = _status_mb("VmHWM") if reset else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _torch_engine(job: dict[str, Any], inputs: dict[str, np.ndarray]) -> Prepared:
    import torch

    from tensorwire.bench.prepare import build
    from tensorwire.export.inputs import flatten_outputs

    manifest = job["manifest"]
    built = build(manifest["source"])
    state = torch.load(manifest["weights"], map_location="cpu", weights_only=True, mmap=True)
    built.module.load_state_dict(state)
    module = built.module.eval()
    info: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    tensors = {n: torch.from_numpy(a) for n, a in inputs.items()}
    keywords = manifest["keywords"]
    if job["engine"] != "eager":
        mode = compile_mode_of(job["engine"])
        module = torch.compile(module, mode=mode)
        info["compile_mode"] = mode or "default"
    last: list[Any] = []

    def call() -> None:
        with torch.inference_mode():
            out = module(**tensors) if keywords else module(*tensors.values())
        last[:] = [out]

    if job["engine"] != "eager":
        t0 = time.perf_counter()
        call()  # compiles
        info["compile_seconds"] = time.perf_counter() - t0
    return Prepared(call, lambda: [t.detach().cpu().numpy() for t in flatten_outputs(last[0])[0]], info)


def _ort_session(job: dict[str, Any]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = job["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    engine = job["engine"]
    if engine == "ort-tensorrt":
        cache = Path(job.get("trt_cache") or Path(job["workdir"]) / "trt-cache")
        cache.mkdir(parents=True, exist_ok=True)
        providers: list[Any] = [("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                                "trt_engine_cache_path": str(cache)}),
                                "CUDAExecutionProvider", "CPUExecutionProvider"]
    elif engine.startswith("ort-cuda"):
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    variant = VARIANTS.get(engine)
    path = job["manifest"]["variants"][variant] if variant else job["manifest"]["onnx"]
    sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
    wanted = GPU_ENGINES.get(engine, "CPUExecutionProvider")
    if sess.get_providers()[0] != wanted:
        raise RuntimeError(f"ONNX Runtime fell back to {sess.get_providers()} instead of {wanted}")
    return sess


def _ort_engine(job: dict[str, Any], inputs: dict[str, np.ndarray], reference: list[np.ndarray]) -> Prepared:
    import onnxruntime as ort

    sess = _ort_session(job)
    info = {"providers": sess.get_providers(), "intra_op_threads": job["threads"]}
    engine = job["engine"]
    names = [o.name for o in sess.get_outputs()]
    if not engine.endswith("iobinding"):
        last: list[Any] = []

        def call() -> None:
            last[:] = sess.run(None, inputs)

        return Prepared(call, lambda: list(last), info)

    # IO binding: bind once, run many times (rebinding each call is the known way to make it slower).
    device = "cuda" if "cuda" in engine else "cpu"
    binding = sess.io_binding()
    keep = []
    for name, arr in inputs.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for name, ref in zip(names, reference):
        value = ort.OrtValue.ortvalue_from_numpy(np.empty(ref.shape, ref.dtype), device, 0)
        keep.append(value)
        binding.bind_ortvalue_output(name, value)
    info["bound"] = f"inputs and preallocated outputs on {device}"

    def call_bound() -> None:
        sess.run_with_iobinding(binding)
        if device != "cpu":
            binding.synchronize_outputs()

    return Prepared(call_bound, lambda: list(binding.copy_outputs_to_cpu()), info)


def parity(outputs: list[np.ndarray], reference: list[np.ndarray], names: list[str], rtol: float,
           atol: float, min_cosine: float | None = None) -> dict[str, Any]:
    """Largest absolute difference and lowest cosine similarity to eager's outputs; ok when every element is
    within rtol/atol, or, given ``min_cosine`` (reduced precision), when every output's cosine reaches it."""
    per_output = []
    for i, ref in enumerate(reference):
        name = names[i] if i < len(names) else f"output_{i}"
        if i >= len(outputs):
            per_output.append({"name": name, "ok": False, "error": "missing output"})
            continue
        got = np.asarray(outputs[i])
        if got.shape != ref.shape:
            per_output.append({"name": name, "ok": False, "error": f"shape {list(got.shape)} != {list(ref.shape)}"})
            continue
        g, r = got.astype(np.float64), ref.astype(np.float64)
        diff = np.abs(g - r)
        cos = _cosine(r, g)
        ok = cos >= min_cosine if min_cosine is not None else np.allclose(g, r, rtol=rtol, atol=atol, equal_nan=True)
        per_output.append({"name": name, "ok": bool(ok), "cosine": cos,
                           "max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
                           "max_abs_reference": float(np.nanmax(np.abs(r))) if r.size else 0.0})
    diffs = [o["max_abs_diff"] for o in per_output if "max_abs_diff" in o]
    cosines = [o["cosine"] for o in per_output if "cosine" in o]
    return {"ok": all(o["ok"] for o in per_output), "max_abs_diff": max(diffs) if diffs else float("nan"),
            "min_cosine": min(cosines) if cosines else float("nan"), "rtol": rtol, "atol": atol,
            "min_cosine_required": min_cosine, "outputs": per_output}


def _cosine(r: np.ndarray, g: np.ndarray) -> float:
    a, b = r.ravel(), g.ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Set threads, load, warm up, time, check parity; the result as a JSON-able dict."""
    threads = job["threads"]
    engine = job["engine"]
    if engine == "eager" or engine.startswith("compile"):
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        import transformers  # noqa: F401  (imported before the baseline: it is part of the engine, not the model)
    else:
        import onnxruntime  # noqa: F401
    baseline, reset = _memory_baseline()
    batch = job["batch"]
    files = job["manifest"]["batches"][str(batch)]
    with np.load(files["inputs"]) as npz:
        inputs = {n: npz[n] for n in job["manifest"]["input_names"]}
    with np.load(files["reference"]) as npz:
        reference = [npz[f"o{i}"] for i in range(len(npz.files))]

    t0 = time.perf_counter()
    if engine == "eager" or engine.startswith("compile"):
        prepared = _torch_engine(job, inputs)
    else:
        prepared = _ort_engine(job, inputs, reference)
    setup_s = time.perf_counter() - t0

    loop = LoopSettings(**job["loop"])
    latencies = measure(prepared.call, loop)
    prepared.call()
    check = parity(prepared.outputs(), reference, job["manifest"]["output_names"], job["rtol"], job["atol"],
                   REDUCED_MIN_COSINE if engine in VARIANTS else None)
    summary = summarize(latencies)
    total = float(np.sum(latencies))
    peak = _peak_mb(reset)
    return {
        "engine": engine,
        "batch": batch,
        "ok": True,
        "threads": threads,
        "latency": summary,
        "median_ms": summary["p50_ms"],
        "throughput_items_s": batch * len(latencies) / total if total > 0 else float("nan"),
        "iterations": len(latencies),
        "setup_seconds": setup_s,
        "compile_seconds": prepared.info.pop("compile_seconds", None),
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "peak_memory_mb": peak - baseline,
        "memory_method": MEMORY_METHOD,
        "memory_peak_reset": reset,
        "parity": check,
        "info": prepared.info,
        "pid": os.getpid(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run_job(job)
        code = 0
    except Exception as exc:  # recorded, shown in the table; the run goes on with the next engine
        result = {"engine": job["engine"], "batch": job["batch"], "ok": False,
                  "error": f"{type(exc).__name__}: {exc}".strip()[:2000], "traceback": traceback.format_exc()[-4000:]}
        code = 1
    Path(argv[1]).write_text(json.dumps(result, default=float))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
