"""`tensorwire bench triton-perf`: NVIDIA's perf_analyzer against `tensorwire serve`, plain gRPC vs system
shared memory vs streaming vs HTTP/REST, side by side in alternating rounds.

perf_analyzer (the C++ client in tritonclient 2.41.0's wheel; ``bash bench/perf_analyzer_env.sh`` builds
its venv) measures, on one server started here with ``--allow-shared-memory``: a 3x224x224 FP32 conv at
``-b 1`` and ``-b 8`` over plain gRPC and over ``--shared-memory system`` (and ``-b 1`` over ``-i http``); a
512-wide MLP at concurrency 8 unary, ``--streaming`` and over ``-i http``; and a 2 KB request (512 FP32 in,
one number out) at concurrency 1, whose p50 plus the conv's in-process ONNX Runtime time is the floor the
shared-memory p50 is held to. perf_analyzer does not compare outputs, so tritonclient sends one fixed input
both ways first and the outputs must be equal. Figures are perf_analyzer's own CSV (``-f``), with each exact command.

``tensorwire bench triton-perf [--perf-analyzer PATH] [--rounds R] [--interval-ms MS] [--out DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tensorwire.bench import machine, timing
from tensorwire.bench.report import write_payload

if TYPE_CHECKING:  # onnx is imported where a model is built: `tensorwire --help` must not need it
    pass

DEFAULT_PERF_ANALYZER = Path("/work/venv-pa/bin/perf_analyzer")
CONV_OUTPUT_BYTES = 16 * 4  # [16] FP32 per batch item


@dataclass(frozen=True)
class Case:
    """One perf_analyzer configuration; cases sharing a ``pair`` are compared with each other."""

    name: str
    model: str
    batch: int = 1
    concurrency: int = 1
    shm: bool = False
    streaming: bool = False
    pair: str = ""
    http: bool = False  # perf_analyzer -i http (binary tensor data) against the server's HTTP port


CASES = [
    Case("conv_b1_grpc", "conv", 1, pair="conv_b1"),
    Case("conv_b1_shm", "conv", 1, shm=True, pair="conv_b1"),
    Case("conv_b1_http", "conv", 1, pair="conv_b1", http=True),
    Case("conv_b8_grpc", "conv", 8, pair="conv_b8"),
    Case("conv_b8_shm", "conv", 8, shm=True, pair="conv_b8"),
    Case("mlp_c8_unary", "mlp", 1, 8, pair="mlp_c8"),
    Case("mlp_c8_streaming", "mlp", 1, 8, streaming=True, pair="mlp_c8"),
    Case("mlp_c8_http", "mlp", 1, 8, pair="mlp_c8", http=True),
    Case("small2k_c1_grpc", "small2k", 1, pair="small2k"),
]


# ---------------------------------------------------------------- models

def build_repository(repo: Path) -> Path:
    """conv, mlp and small2k (bench/models.py), each max_batch_size 8, one CPU instance."""
    from tensorwire.bench.models import CPU_CONFIG, conv_model, mlp_model, small_model, write_repository

    return write_repository(repo, {"conv": (conv_model(), CPU_CONFIG), "mlp": (mlp_model(), CPU_CONFIG),
                                   "small2k": (small_model(), CPU_CONFIG)})


# ---------------------------------------------------------------- perf_analyzer

def command(pa: Path, address: str, case: Case, csv_path: Path, interval_ms: int, max_trials: int,
            stability: int = 100) -> list[str]:
    """The perf_analyzer command line of one case (recorded as it ran). ``stability`` is perf_analyzer's
    --stability-percentage: its default 10 never settles on a shared 2-core machine, so we accept the last
    three windows as they are and get the spread from the rounds instead."""
    cmd = [str(pa), "-m", case.model, "-u", address, "-i", "http" if case.http else "grpc", "-b", str(case.batch),
           "--concurrency-range", str(case.concurrency), "--measurement-interval", str(interval_ms),
           "--stability-percentage", str(stability), "--max-trials", str(max_trials), "-f", str(csv_path)]
    if case.shm:
        cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(CONV_OUTPUT_BYTES * case.batch)]
    if case.streaming:
        cmd += ["--streaming"]
    return cmd


def parse_csv(text: str) -> dict[str, float]:
    """perf_analyzer's ``-f`` CSV (one row per concurrency; we run one) as numbers: throughput in
    inferences/s (batch items), latencies in microseconds, server-side columns from ModelStatistics."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer wrote no CSV rows")
    row = rows[0]
    out = {}
    for key, value in row.items():
        if key is None or value in (None, ""):
            continue
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    for needed in ("Inferences/Second", "p50 latency"):
        if needed not in out:
            raise ValueError(f"perf_analyzer CSV has no {needed!r} column: {list(row)}")
    return out


def run_case(pa: Path, address: str, case: Case, workdir: Path, interval_ms: int, max_trials: int,
             timeout_s: float, stability: int = 100, prefix: list[str] = ()) -> dict[str, Any]:
    """One perf_analyzer run (after ``prefix``, e.g. ``taskset -c 1``); its figures, or the error it printed."""
    csv_path = workdir / f"{case.name}-{time.monotonic_ns()}.csv"
    cmd = [*prefix, *command(pa, address, case, csv_path, interval_ms, max_trials, stability)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": case.name, "error": f"timed out after {timeout_s:g} s", "command": shlex.join(cmd)}
    result: dict[str, Any] = {"case": case.name, "command": shlex.join(cmd), "rc": proc.returncode}
    if proc.returncode != 0 or not csv_path.exists():
        result["error"] = (proc.stderr.strip() or proc.stdout.strip())[-800:]
        return result
    result["csv"] = csv_path.read_text()
    result["figures"] = parse_csv(result["csv"])
    return result


# ---------------------------------------------------------------- server, outputs, in-process time

def start_server(stack, repo: Path, server_args: list[str]):
    """`tensorwire serve` with --allow-shared-memory; (server, None), or, when that server refuses the flag
    (a build without the extension), one without it and the reason the shared-memory cases are skipped."""
    from tensorwire.launcher import tensorwire_server

    try:
        return stack.enter_context(tensorwire_server(repo, "--allow-shared-memory", *server_args)), None
    except (RuntimeError, AssertionError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        reason = "the server refused --allow-shared-memory: " + (lines[-1] if lines else "no output")
    return stack.enter_context(tensorwire_server(repo, *server_args)), reason


def _shm_infer(client, x: np.ndarray, out_shape: tuple[int, ...], tag: str) -> np.ndarray:
    """conv over system shared memory with tritonclient's own helpers: input and output in regions."""
    import tritonclient.grpc as tc
    import tritonclient.utils.shared_memory as shm

    out_bytes = int(np.prod(out_shape)) * 4
    key = f"/tensorwire_pa_{tag}"
    regions = [("pa_in_" + tag, key + "_in", x.nbytes), ("pa_out_" + tag, key + "_out", out_bytes)]
    handles = [shm.create_shared_memory_region(n, k, size) for n, k, size in regions]
    try:
        shm.set_shared_memory_region(handles[0], [x])
        for n, k, size in regions:
            client.register_system_shared_memory(n, k, size)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory(regions[0][0], x.nbytes)
        out = tc.InferRequestedOutput("output")
        out.set_shared_memory(regions[1][0], out_bytes)
        client.infer("conv", [inp], outputs=[out])
        return np.array(shm.get_contents_as_numpy(handles[1], np.float32, list(out_shape)))
    finally:
        for n, _, _ in regions:
            with contextlib.suppress(Exception):  # a failed register leaves nothing to unregister
                client.unregister_system_shared_memory(n)
        for h in handles:
            shm.destroy_shared_memory_region(h)


def _stream_infer(client, x: np.ndarray) -> np.ndarray:
    """mlp over ModelStreamInfer with tritonclient's stream API."""
    import queue

    import tritonclient.grpc as tc

    answers: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer("mlp", [inp])
        result, error = answers.get(timeout=60)
        if error is not None:
            raise RuntimeError(f"streamed mlp request failed: {error}")
        return result.as_numpy("output")
    finally:
        client.stop_stream()


def check_outputs(address: str, shm_reason: str | None) -> dict[str, Any]:
    """Same input both ways, outputs compared bit for bit: conv plain vs shared memory (b1, b8), mlp unary
    vs streaming. perf_analyzer checks no outputs, so this is how equality between modes is established."""
    import tritonclient.grpc as tc

    rng = np.random.default_rng(7)
    result: dict[str, Any] = {}
    with tc.InferenceServerClient(address) as client:
        for b in (1, 8):
            x = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
            inp = tc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            plain = client.infer("conv", [inp]).as_numpy("output")
            if shm_reason is None:
                result[f"conv_b{b}_shm_equals_grpc"] = bool(np.array_equal(plain, _shm_infer(client, x, (b, 16),
                                                                                            f"b{b}")))
        x = rng.standard_normal((1, 512)).astype(np.float32)
        inp = tc.InferInput("input", [1, 512], "FP32")
        inp.set_data_from_numpy(x)
        unary = client.infer("mlp", [inp]).as_numpy("output")
        result["mlp_streaming_equals_unary"] = bool(np.array_equal(unary, _stream_infer(client, x)))
    return result


def ort_times(repo: Path, address: str, runs: int) -> dict[str, Any]:
    """The conv's in-process ONNX Runtime p50 at batch 1 and 8, with the intra-op threads the server chose."""

    from tensorwire.client import InferenceClient

    with InferenceClient(address) as c:
        threads = int(c.model_config("conv").parameters["intra_op_thread_count"].string_value or 0)
    session = timing.cpu_session(repo / "conv" / "1" / "model.onnx", threads)
    out: dict[str, Any] = {"intra_op_threads": threads, "runs": runs}
    for b in (1, 8):
        x = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)
        times = timing.measure(lambda x=x: session.run(None, {"input": x}), timing.fixed_count(runs, warmup=5))
        out[f"conv_b{b}_p50_us"] = float(np.median(times) * 1e6)
    return out


# ---------------------------------------------------------------- the run

@dataclass
class Plan:
    perf_analyzer: Path
    rounds: int = 4
    interval_ms: int = 3000
    max_trials: int = 6
    stability: int = 100
    ort_runs: int = 200
    timeout_s: float = 180.0
    server_args: tuple[str, ...] = ()
    cases: tuple[str, ...] = ()       # names to run (default: all)


def measure(plan: Plan) -> dict[str, Any]:
    """Build the repository, start one server, check outputs, then run the cases in alternating rounds
    (forward, then backward, so no case always follows the same one)."""
    cases = [c for c in CASES if not plan.cases or c.name in plan.cases]
    with tempfile.TemporaryDirectory(prefix="tensorwire-pa-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        repo = build_repository(workdir / "models")
        server, shm_reason = start_server(stack, repo, list(plan.server_args))
        payload: dict[str, Any] = {"shm_skipped": shm_reason, "equality": check_outputs(server.address, shm_reason),
                                   "ort": ort_times(repo, server.address, plan.ort_runs), "runs": []}
        for r in range(plan.rounds):
            for case in cases if r % 2 == 0 else cases[::-1]:
                if case.shm and shm_reason:
                    continue
                address = server.http_address if case.http else server.address
                run = run_case(plan.perf_analyzer, address, case, workdir, plan.interval_ms,
                               plan.max_trials, plan.timeout_s, plan.stability)
                payload["runs"].append({**run, "round": r})
    return payload


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarize(payload: dict[str, Any], cases: list[Case]) -> dict[str, Any]:
    """Per case: median throughput and latencies over rounds. Per pair: the median of per-round ratios
    (each round's two runs are neighbours in time). The shared-memory b1 p50 against its floor."""
    per_case: dict[str, dict[str, Any]] = {}
    by_round: dict[tuple[str, int], dict[str, float]] = {}
    for run in payload["runs"]:
        if "figures" in run:
            by_round[(run["case"], run["round"])] = run["figures"]
    for case in cases:
        figs = [f for (name, _), f in by_round.items() if name == case.name]
        errors = [r["error"] for r in payload["runs"] if r["case"] == case.name and "error" in r]
        per_case[case.name] = {"rounds": len(figs), "errors": errors,
                               **{key: _median([f[col] for f in figs if col in f]) for key, col in (
                                   ("throughput_infer_s", "Inferences/Second"), ("p50_us", "p50 latency"),
                                   ("p90_us", "p90 latency"), ("p99_us", "p99 latency"))}}
    ratios = {}
    for a, b, key in (("conv_b1_shm", "conv_b1_grpc", "conv_b1_shm_vs_grpc_throughput"),
                      ("conv_b8_shm", "conv_b8_grpc", "conv_b8_shm_vs_grpc_throughput"),
                      ("mlp_c8_streaming", "mlp_c8_unary", "mlp_c8_streaming_vs_unary_throughput")):
        paired = [by_round[(a, r)]["Inferences/Second"] / by_round[(b, r)]["Inferences/Second"]
                  for (name, r) in by_round if name == a and (b, r) in by_round]
        ratios[key] = _median(paired)
    floor = None
    small, shm = per_case.get("small2k_c1_grpc", {}), per_case.get("conv_b1_shm", {})
    if small.get("p50_us") and payload["ort"].get("conv_b1_p50_us"):
        floor = small["p50_us"] + payload["ort"]["conv_b1_p50_us"]
    ratios["conv_b1_shm_p50_vs_floor"] = shm["p50_us"] / floor if floor and shm.get("p50_us") else None
    return {"cases": per_case, "ratios": ratios, "floor_us": floor, "ceilings": ceilings(by_round, payload["ort"])}


def ceilings(by_round: dict[tuple[str, int], dict[str, float]], ort: dict[str, Any]) -> dict[str, float | None]:
    """The most a free transport could give each shared-memory throughput ratio, per round (median).

    At concurrency 1 a request takes its plain-gRPC time (batch / infer/s); a transport that cost nothing
    beyond a 2 KB request's round trip (1 / small2k's infer/s) would still pay the model's run: the server's
    own "Server Compute Infer" in that round's shared-memory run (``server``), or the in-process ORT p50
    (``in_process``). Plain time over that sum bounds the ratio whatever the shared-memory path does."""
    out: dict[str, float | None] = {}
    for b in (1, 8):
        plain, shm = f"conv_b{b}_grpc", f"conv_b{b}_shm"
        for source in ("server", "in_process"):
            values = []
            for (name, r), small in by_round.items():
                if name != "small2k_c1_grpc" or (plain, r) not in by_round or (shm, r) not in by_round:
                    continue
                model_us = (by_round[(shm, r)].get("Server Compute Infer") if source == "server"
                            else ort.get(f"conv_b{b}_p50_us"))
                if model_us:
                    values.append((b / by_round[(plain, r)]["Inferences/Second"])
                                  / (1 / small["Inferences/Second"] + model_us * 1e-6))
            out[f"conv_b{b}_{source}"] = _median(values)
    return out


TARGETS = {"conv_b1_shm_vs_grpc_throughput": (">=", 1.5), "conv_b8_shm_vs_grpc_throughput": (">=", 2.5),
           "mlp_c8_streaming_vs_unary_throughput": (">=", 1.3), "conv_b1_shm_p50_vs_floor": ("<=", 1.15)}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    """The figures, the ratios against the issue's targets, equality, and every exact command."""
    s = payload["summary"]
    rows = [f"| {name} | {c['rounds']} | {_fmt(c['throughput_infer_s'], 1)} | {_fmt(c['p50_us'])} | "
            f"{_fmt(c['p90_us'])} | {_fmt(c['p99_us'])} | {'; '.join(e[:80] for e in c['errors']) or '-'} |"
            for name, c in s["cases"].items()]
    ratio_rows = []
    for key, value in s["ratios"].items():
        op, target = TARGETS[key]
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        ratio_rows.append(f"| {key} | {_fmt(value, 3)} | {op} {target} | "
                          f"{'-' if met is None else 'met' if met else 'NOT met'} |")
    commands = {}
    for run in payload["runs"]:
        commands.setdefault(run["case"], run["command"])
    ort = payload["ort"]
    lines = [
        "# tensorwire bench triton-perf", "",
        f"Machine: {payload['machine'].get('cpu', '?')}, {payload['machine'].get('cores_usable', '?')} usable "
        f"cores. {payload['perf_analyzer_version']}. Command: `{payload['command']}`", "",
        "perf_analyzer against one `tensorwire serve` (all three models loaded), cases in alternating rounds "
        "(forward, then backward); each figure is the median over rounds, each ratio the median of per-round "
        "ratios. Throughput is perf_analyzer's inferences/s (batch items: `-b 8` counts 8 per request); "
        "latencies in microseconds.", "",
        "| case | rounds | infer/s | p50 us | p90 us | p99 us | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows, "",
        f"Floor for the shared-memory b1 p50: small2k p50 + conv in-process ORT p50 ({_fmt(ort.get('conv_b1_p50_us'))}"
        f" us at b1, {_fmt(ort.get('conv_b8_p50_us'))} us at b8, {ort.get('intra_op_threads')} intra-op threads as "
        f"the server) = {_fmt(s['floor_us'])} us.", "",
        "| ratio | value | target | |", "| --- | --- | --- | --- |", *ratio_rows, "",
        "The most a free transport could give (plain gRPC time over a 2 KB round trip + the model's run; "
        "median over rounds; `ceilings` in bench/triton_perf.py): "
        + ", ".join(f"{k} {_fmt(v, 2)}x" for k, v in s.get("ceilings", {}).items()) + ". A target above the "
        "`server` ceiling cannot be met unless the model itself ran faster inside the server; above the "
        "`in_process` one, not even then.", "",
        f"Shared-memory cases: {'skipped: ' + payload['shm_skipped'] if payload['shm_skipped'] else 'run'}.", "",
        "Outputs (tritonclient, one fixed input each way, compared bit for bit; perf_analyzer compares none): "
        + ", ".join(f"{k}: {v}" for k, v in payload["equality"].items()), "",
        "Commands (the first round's; later rounds differ only in the CSV path):", "",
        *[f"- {name}: `{cmd}`" for name, cmd in commands.items()],
    ]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench triton-perf``."""
    p.add_argument("--perf-analyzer", type=Path, default=DEFAULT_PERF_ANALYZER,
                   help=f"perf_analyzer to run (default: {DEFAULT_PERF_ANALYZER}, the wrapper that "
                   "bench/perf_analyzer_env.sh writes)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds over every case (default 4)")
    p.add_argument("--interval-ms", type=int, default=3000,
                   help="perf_analyzer --measurement-interval per window (default 3000)")
    p.add_argument("--max-trials", type=int, default=6, help="perf_analyzer --max-trials (default 6)")
    p.add_argument("--stability", type=int, default=100,
                   help="perf_analyzer --stability-percentage (default 100: its 10 never settles on a shared machine; "
                   "the rounds give the spread)")
    p.add_argument("--case", dest="cases", action="append", default=[], choices=[c.name for c in CASES],
                   help="run only this case, repeatable (default: all)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tensorwire serve` argument, repeatable, e.g. --server-arg=--intra-op-spinning "
                   "(default: none)")
    p.add_argument("--out", type=Path, help="result directory, e.g. bench/results/triton_perf (default: print only)")
    p.add_argument("--quick", action="store_true", help="1 round, 500 ms windows, 3 trials (a smoke run)")


def perf_analyzer_version(pa: Path) -> tuple[str, str | None]:
    """(the version line ``pa --version`` prints, why it cannot run or None)."""
    try:
        done = subprocess.run([str(pa), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return "", f"cannot run {pa}: {exc} (bash bench/perf_analyzer_env.sh builds it)"
    text = (done.stdout + done.stderr).strip()
    return (text.splitlines()[-1] if text else ""), None


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench triton-perf``: 0 when every case ran, 1 if some failed, 2 when it could not start."""
    pa = args.perf_analyzer
    version, problem = perf_analyzer_version(pa)
    if problem is not None:
        print(f"tensorwire bench triton-perf: {problem}", file=sys.stderr)
        return 2
    plan = Plan(pa, rounds=args.rounds, interval_ms=args.interval_ms, max_trials=args.max_trials,
                stability=args.stability, server_args=tuple(args.server_arg), cases=tuple(args.cases))
    if args.quick:
        plan.rounds, plan.interval_ms, plan.max_trials, plan.ort_runs = 1, 500, 3, 20
    payload = measure(plan)
    payload.update(kind="triton_perf", schema=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   machine=machine.describe(), perf_analyzer_version=version,
                   command=shlex.join(["tensorwire", "bench", "triton-perf", *sys.argv[3:]]),
                   plan={k: str(v) if isinstance(v, Path) else v for k, v in plan.__dict__.items()})
    payload["summary"] = summarize(payload, [c for c in CASES if not plan.cases or c.name in plan.cases])
    write_payload(payload, markdown(payload), args.out, "triton_perf")
    return 0 if all("error" not in r for r in payload["runs"]) else 1
