"""`tensorwire demo`: the whole product on its built-in MLP, in one command.

export (torch -> ONNX model repository) -> serve (a real `tensorwire serve` process) -> call (a gRPC
client over loopback, checked against PyTorch) -> measure (round-trip latency beside in-process ONNX
Runtime and a bare grpcio echo of the same bytes) -> stop (SIGTERM, exit code 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tensorwire.client import InferenceClient, encode_request
from tensorwire.launcher import echo_server, tensorwire_server

MODEL = "mlp"
WARMUP_CALLS = 20


def _step(n: int, name: str, text: str) -> None:
    print(f"[{n}/5] {name:<8} {text}", flush=True)


def _time_calls(fn: Callable[[], object], n: int) -> dict[str, float]:
    """p50 and p99 in ms of ``n`` sequential calls after a short warm-up.

    Deliberately tiny rather than bench/'s timing loop: the demo must not import the benchmarks, and
    a fixed count of calls is all it needs to put three paths side by side.
    """
    for _ in range(WARMUP_CALLS):
        fn()
    latencies = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        latencies[i] = time.perf_counter() - t0
    p50, p99 = np.percentile(latencies * 1e3, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99)}


def run(args: argparse.Namespace) -> int:
    """Export, serve, call, measure, stop; 0 when the served answer matched PyTorch and the server exited 0."""
    try:
        import torch

        from tensorwire.export import build_builtin
    except ImportError as exc:
        print(f"tensorwire demo needs the export extra: pip install \".[cpu,export]\" in a checkout ({exc})",
              file=sys.stderr)
        return 2
    repo = Path(args.model_repository).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    builtin = build_builtin(MODEL)
    model_file = _export(builtin, repo)
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    with torch.inference_mode():
        expected = builtin.module.eval()(torch.from_numpy(x)).numpy()

    with tensorwire_server(repo, "--fastpath", args.fastpath) as server:
        _step(2, "serve", f"tensorwire serve --model-repository {repo} -> {server.address}")
        with InferenceClient(server.address, timeout=30) as client:
            _wait_ready(client, server)
            ok = _call(client, x, expected)
            _measure(client, model_file, x, args.requests)
        proc = server.process
    _step(5, "stop", f"SIGTERM -> server exited with code {proc.returncode}")
    return 0 if ok and proc.returncode == 0 else 1


def _export(builtin, repo: Path) -> Path:
    """Step 1: the built-in MLP into ``repo``; returns the written model file."""
    from tensorwire.export import export_model

    t0 = time.perf_counter()
    report = export_model(builtin.module, builtin.example_inputs, name=MODEL, repository=repo,
                          input_names=builtin.input_names, output_names=builtin.output_names,
                          dynamic_axes=builtin.dynamic_axes, max_batch_size=8,
                          version=1, overwrite=True)   # each run replaces the demo's one version on purpose
    model_file = repo / MODEL / "1" / "model.onnx"
    _step(1, "export", f"{MODEL} via the {report.exporter} exporter -> {model_file} "
          f"({model_file.stat().st_size / 1e6:.1f} MB, {report.nodes_exported} -> {report.nodes_served} nodes, "
          f"{time.perf_counter() - t0:.1f} s; parity vs PyTorch at {len(report.parity)} shapes: max |diff| "
          f"{report.parity_max_abs_diff:.1e})")
    return model_file


def _wait_ready(client: InferenceClient, server) -> None:
    deadline = time.monotonic() + 60
    while not client.model_ready(MODEL):
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {MODEL} not ready:\n{server.log()}")
        time.sleep(0.1)


def _call(client: InferenceClient, x: np.ndarray, expected: np.ndarray) -> bool:
    """Step 3: one ModelInfer, checked against PyTorch's answer."""
    got = client.infer(MODEL, {"input": x}, request_id="demo-1")["output"]
    diff = float(np.abs(got - expected).max())
    ok = bool(np.allclose(got, expected, rtol=1e-3, atol=1e-4))
    _step(3, "call", f"ModelInfer {MODEL} input[1,512] FP32 -> output{list(got.shape)} "
          f"{np.array2string(got[0, :4], precision=4)}...; "
          f"vs PyTorch max |diff| {diff:.2e} ({'OK' if ok else 'MISMATCH'})")
    return ok


def _measure(client: InferenceClient, model_file: Path, x: np.ndarray, requests: int) -> None:
    """Step 4: the served round trip beside in-process ONNX Runtime and the bare grpcio echo (the floor)."""
    import onnxruntime as ort

    request = encode_request(MODEL, {"input": x})
    response_size = len(client.infer_bytes(request))
    served = _time_calls(lambda: client.infer_bytes(request), requests)
    # The in-process session runs the model the way the server does (it may pick 1 thread at load).
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(client.model_config(MODEL).parameters["intra_op_thread_count"]
                                       .string_value or 0)
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    in_process = _time_calls(lambda: session.run(None, {"input": x}), requests)
    with echo_server(response_size) as echo, InferenceClient(echo.address, timeout=30) as echo_client:
        floor = _time_calls(lambda: echo_client.infer_bytes(request), requests)
    _step(4, "measure", f"{requests} sequential requests over loopback gRPC:\n"
          f"           tensorwire ModelInfer      p50 {served['p50_ms']:.3f} ms  p99 {served['p99_ms']:.3f} ms\n"
          f"           in-process ONNX Runtime    p50 {in_process['p50_ms']:.3f} ms  "
          f"p99 {in_process['p99_ms']:.3f} ms\n"
          f"           bare grpcio echo (floor)   p50 {floor['p50_ms']:.3f} ms  p99 {floor['p99_ms']:.3f} ms "
          f"({len(request)} B in, {response_size} B out)\n"
          f"           server overhead (p50 - ORT p50) = {served['p50_ms'] - in_process['p50_ms']:.3f} ms "
          f"vs floor {floor['p50_ms']:.3f} ms")
