"""End to end: the server with the Cython codec vs with the pure-Python twin vs a bare grpcio echo.

For each model, one client sends the same pre-encoded request sequentially to: tensorwire with
``--fastpath ext``, tensorwire with ``--fastpath twin``, and the echo server answering with as many
bytes as tensorwire's response; the model also runs in-process in ONNX Runtime. The server's
overhead is its p50 minus the in-process p50, compared with the echo's p50 (the cost of the gRPC
round trip alone). Rounds alternate between the servers so drift on a shared machine hits all alike.
Each server's overhead is taken against an in-process session with the intra-op thread count that server
chose for the model (its ModelConfig says which), so both sides run the model the same way.

``tensorwire bench fastpath [--requests N] [--rounds R] [--out DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tensorwire.bench.report import write_rows
from tensorwire.bench.stats import summarize
from tensorwire.bench.timing import cpu_session, fixed_count, measure
from tensorwire.client import InferenceClient, encode_request
from tensorwire.launcher import echo_server, tensorwire_server

if TYPE_CHECKING:  # onnx is imported where a model is built: `tensorwire --help` must not need it
    import onnx


def mlp_model() -> onnx.ModelProto:
    """512 -> 1024 -> 1024 -> 10 with ReLU: the small MLP where gRPC cost dominates."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [512, 1024, 1024, 10]
    nodes, inits, prev = [], [], "input"
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}"))
        out = "output" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out if i == 2 else f"g{i}"]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 512])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def image_model() -> onnx.ModelProto:
    """[b,3,224,224] FP32 -> per-channel mean [b,3]: an image-sized request with little compute."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["channel_mean"], axes=[2, 3], keepdims=0)], "image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 224, 224])],
        [helper.make_tensor_value_info("channel_mean", TensorProto.FLOAT, ["b", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


MODELS = {"mlp": (mlp_model, "input", (1, 512)), "image_3x224x224": (image_model, "pixel_values", (1, 3, 224, 224))}


def _timed(fn, n: int) -> list[float]:
    return measure(fn, fixed_count(n, warmup=0))


def _calls(ce, ct, cf, sessions: dict, request: bytes, input_name: str, x: np.ndarray) -> dict:
    """The timed calls; one in-process baseline per intra-op thread count the two servers chose."""
    calls = {"ext": lambda: ce.infer_bytes(request), "twin": lambda: ct.infer_bytes(request),
             "echo": lambda: cf.infer_bytes(request)}
    for threads, session in sessions.items():
        calls[f"ort{threads}"] = lambda s=session: s.run(None, {input_name: x})
    return calls


def measure_servers(requests: int, rounds: int, out: Path | None, server_args: list[str] = ()) -> list[dict]:
    """Runs in a temporary directory that is removed afterwards (models, logs)."""
    with tempfile.TemporaryDirectory(prefix="tensorwire-bench-") as tmp:
        return _run_in(Path(tmp), requests, rounds, out, server_args)


def _run_in(workdir: Path, requests: int, rounds: int, out: Path | None, server_args: list[str] = ()) -> list[dict]:
    import onnx

    repo = workdir / "models"
    for name, (build, _, _) in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        onnx.save(build(), str(repo / name / "1" / "model.onnx"))
        (repo / name / "config.pbtxt").write_text("max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n")
    rows = []
    with tensorwire_server(repo, "--fastpath", "ext", *server_args) as ext_srv, \
            tensorwire_server(repo, "--fastpath", "twin", *server_args) as twin_srv:
        for name, (_, input_name, shape) in MODELS.items():
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            request = encode_request(name, {input_name: x})
            with InferenceClient(ext_srv.address) as ce, InferenceClient(twin_srv.address) as ct:
                threads = {k: int(c.model_config(name).parameters["intra_op_thread_count"].string_value or 0)
                           for k, c in (("ext", ce), ("twin", ct))}
                sessions = {}
                for n in sorted(set(threads.values())):
                    sessions[n] = cpu_session(repo / name / "1" / "model.onnx", n)
                response_size = len(ce.infer_bytes(request))
                with echo_server(response_size, workdir=workdir) as echo, InferenceClient(echo.address) as cf:
                    calls = _calls(ce, ct, cf, sessions, request, input_name, x)
                    lat: dict[str, list[float]] = {k: [] for k in calls}
                    for fn in calls.values():
                        _timed(fn, 50)  # warm-up
                    for _ in range(rounds):
                        for key, fn in calls.items():
                            lat[key].extend(_timed(fn, requests // rounds))
            s = {k: summarize(v) for k, v in lat.items()}
            s["ort"] = s[f"ort{threads['ext']}"]  # the ext server's baseline, shown in the table
            row = {"model": name, "request_bytes": len(request), "response_bytes": response_size,
                   "ext_threads": threads["ext"], "twin_threads": threads["twin"],
                   **{f"{k}_{m}": s[k][m] for k in s for m in ("p50_ms", "p99_ms")},
                   **{f"{k}_rps": 1e3 / s[k]["mean_ms"] for k in s}}
            for k in ("ext", "twin"):
                row[f"{k}_overhead_ms"] = s[k]["p50_ms"] - s[f"ort{threads[k]}"]["p50_ms"]
                row[f"{k}_overhead_over_echo"] = row[f"{k}_overhead_ms"] / s["echo"]["p50_ms"]
            rows.append(row)
    table = markdown(rows)
    print(table)
    if out:
        write_rows(rows, table, out, "fastpath_e2e")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | request | intra-op threads (ext/twin) | ext p50 / p99 (ms) | twin p50 / p99 (ms) "
             "| echo p50 / p99 (ms) | in-process ORT p50 "
             "(ms) | ext req/s | twin req/s | echo req/s | overhead ext / echo p50 | overhead twin / echo p50 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['request_bytes']} B | {r['ext_threads']}/{r['twin_threads']} | "
            f"{r['ext_p50_ms']:.3f} / {r['ext_p99_ms']:.3f} | "
            f"{r['twin_p50_ms']:.3f} / {r['twin_p99_ms']:.3f} | {r['echo_p50_ms']:.3f} / {r['echo_p99_ms']:.3f} | "
            f"{r['ort_p50_ms']:.3f} | {r['ext_rps']:.0f} | {r['twin_rps']:.0f} | {r['echo_rps']:.0f} | "
            f"{r['ext_overhead_over_echo']:.2f}x | {r['twin_overhead_over_echo']:.2f}x |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench fastpath``."""
    p.add_argument("--requests", type=int, default=2000, help="requests per server and model (default 2000)")
    p.add_argument("--rounds", type=int, default=10, help="alternations between the servers (default 10)")
    p.add_argument("--out", type=Path, help="directory for fastpath_e2e.json and .md (default: print only)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `tensorwire serve` flag, e.g. --server-arg=--cpu-affinity=1 (repeatable; "
                   "default: none)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench fastpath``."""
    measure_servers(args.requests, args.rounds, args.out, args.server_arg)
    return 0
