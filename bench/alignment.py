"""Why the server copies misaligned input views: ONNX Runtime's time on aligned views, misaligned
views, and misaligned views copied first, for the two benchmark models.

Raw inputs decoded by the Cython codec are views into the request bytes and start wherever the field
sits in the message, usually not on a 4-byte boundary. ``tensorwire bench alignment``
"""

from __future__ import annotations

import argparse

import numpy as np

from tensorwire.bench import timing
from tensorwire.bench.fastpath_e2e import MODELS


def _median_us(fn, n: int = 2000) -> float:
    return float(np.median(timing.measure(fn, timing.fixed_count(n, warmup=200)))) * 1e6


def measure() -> list[dict]:
    import onnxruntime as ort

    rows = []
    for name, (build, input_name, shape) in MODELS.items():
        session = ort.InferenceSession(build().SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        padded = b"\0" + x.tobytes()
        misaligned = np.frombuffer(memoryview(padded)[1:], np.float32).reshape(shape)
        aligned = np.frombuffer(x.tobytes(), np.float32).reshape(shape)
        assert aligned.flags.aligned and not misaligned.flags.aligned
        rows.append({
            "model": name,
            "input_bytes": x.nbytes,
            "aligned_us": _median_us(lambda a=aligned, s=session, n=input_name: s.run(None, {n: a})),
            "misaligned_us": _median_us(lambda a=misaligned, s=session, n=input_name: s.run(None, {n: a})),
            "copy_then_run_us": _median_us(lambda a=misaligned, s=session, n=input_name: s.run(None, {n: a.copy()})),
            "copy_us": _median_us(lambda a=misaligned: a.copy()),
        })
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``tensorwire bench alignment`` has no flags: it prints its table (bench/results/fastpath/alignment.md)."""


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench alignment``."""
    print("| model | input | run aligned (us) | run misaligned (us) | copy + run (us) | copy alone (us) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in measure():
        print(f"| {r['model']} | {r['input_bytes']} B | {r['aligned_us']:.1f} | {r['misaligned_us']:.1f} | "
              f"{r['copy_then_run_us']:.1f} | {r['copy_us']:.1f} |")
    return 0
