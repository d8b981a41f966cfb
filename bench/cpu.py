"""`tensorwire bench cpu`: server CPU per request, unary and streaming, for server variants beside a bare
grpcio echo, in alternating rounds.

Every variant (``--variant NAME=ARGS``: `tensorwire serve` arguments) serves the 512-wide MLP [1,512] FP32;
the echo (tensorwire.echo) answers with as many bytes. Each round runs every target (variant x transport,
then echo x transport), forward then backward in turn, at each concurrency with `bench load`'s closed loop,
reading the server's user + system CPU from /proc around each level. Ratios are taken within a round
(CPU against the echo's on the same transport and concurrency; p50 and throughput against the first
variant; streaming against unary), then the median over rounds: the machine is shared and its noise moves
every target of a round alike. The model's in-process ONNX Runtime CPU per run is measured too: it is the
part of a request's CPU no server can avoid.

``tensorwire bench cpu [--variant NAME=ARGS ...] [--concurrency 1,8] [--rounds R] [--out DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.bench import arguments, load, machine, procstat, timing
from tensorwire.bench.report import write_payload

DEFAULT_VARIANTS = ["default="]


@dataclass
class Target:
    name: str           # variant or "echo"
    address: str
    pids: list[int]
    streaming: bool

    @property
    def key(self) -> str:
        return f"{self.name}/{'stream' if self.streaming else 'unary'}"


@dataclass
class Plan:
    variants: dict[str, list[str]] = field(default_factory=dict)
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    rounds: int = 3
    duration_s: float = 3.0
    warmup_s: float = 0.5
    streaming: bool = True
    ort_runs: int = 300


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``spin=--intra-op-spinning`` -> ("spin", ["--intra-op-spinning"])."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=ARGS (ARGS may be empty)")
    return name.strip(), shlex.split(rest)


def _repository(workdir: Path) -> Path:
    from tensorwire.bench.models import CPU_CONFIG, mlp_model, write_model

    repo = workdir / "models"
    write_model(repo, "mlp", mlp_model(), CPU_CONFIG)
    return repo


def ort_cpu(repo: Path, threads: list[int], runs: int) -> dict[str, dict[str, float]]:
    """In-process ORT per run at each intra-op thread count: wall p50 and process CPU (spinning off, as served)."""

    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    out = {}
    for n in sorted(set(threads)):
        session = timing.cpu_session(repo / "mlp" / "1" / "model.onnx", n)
        for _ in range(20):
            session.run(None, {"input": x})
        cpu0 = time.process_time()
        walls = timing.measure(lambda s=session: s.run(None, {"input": x}), timing.fixed_count(runs, warmup=0))
        cpu = time.process_time() - cpu0
        out[str(n)] = {"wall_p50_us": float(np.median(walls) * 1e6), "cpu_us_per_run": cpu / runs * 1e6}
        del session
    return out


def _start(stack: contextlib.ExitStack, plan: Plan, repo: Path, request: bytes) -> tuple[list[Target], dict]:
    """Every variant's server, then the echo sized to their answer; the targets in round order."""
    from tensorwire.client import InferenceClient
    from tensorwire.launcher import echo_server, tensorwire_server

    targets, threads = [], {}
    transports = [False, True] if plan.streaming else [False]
    response_bytes = 0
    for name, args in plan.variants.items():
        server = stack.enter_context(tensorwire_server(repo, *args))
        with InferenceClient(server.address) as client:
            response_bytes = len(client.infer_bytes(request))
            threads[name] = int(client.model_config("mlp").parameters["intra_op_thread_count"].string_value or 0)
        pids = procstat.local_server_pids(server.address)
        targets += [Target(name, server.address, pids, s) for s in transports]
    echo = stack.enter_context(echo_server(response_bytes, "--threads", str(max([8, *plan.concurrency]))))
    targets += [Target("echo", echo.address, [echo.process.pid], s) for s in transports]
    return targets, threads


def measure(plan: Plan) -> dict[str, Any]:
    """All targets, ``plan.rounds`` alternating rounds; one row per (round, target, concurrency)."""
    from tensorwire.client import encode_request

    x = np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)
    request = encode_request("mlp", {"input": x})
    rows = []
    with tempfile.TemporaryDirectory(prefix="tensorwire-cpu-") as tmp, contextlib.ExitStack() as stack:
        repo = _repository(Path(tmp))
        targets, threads = _start(stack, plan, repo, request)
        for r in range(plan.rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                s = load.LoadSettings(target=t.address, model="mlp", duration_s=plan.duration_s,
                                      warmup_s=plan.warmup_s, streaming=t.streaming, progress=False)
                for c in plan.concurrency:
                    lv = load.run_level(s, request, "closed", c, pids=t.pids)
                    rows.append({"round": r, "target": t.key, "variant": t.name, "streaming": t.streaming,
                                 "concurrency": c, "ok": lv["ok"], "errors": lv["errors"],
                                 "throughput_rps": lv["throughput_rps"], "p50_ms": lv["latency"].get("p50_ms"),
                                 "p99_ms": lv["latency"].get("p99_ms"),
                                 "cpu_us_per_request": lv["server_cpu"]["us_per_request"],
                                 "cpu": lv["server_cpu"]})
        ort = ort_cpu(repo, list(threads.values()), plan.ort_runs)
    return {"rows": rows, "intra_op_threads": threads, "ort": ort,
            "targets": [t.key for t in targets]}


def _paired(rows: list[dict], a: str, b: str, c: int, metric: str) -> float | None:
    """Median over rounds of (a's metric / b's metric) at concurrency ``c``, each round paired with itself."""
    by = {(r["target"], r["round"]): r[metric] for r in rows if r["concurrency"] == c}
    ratios = [by[(a, rnd)] / by[(b, rnd)] for (t, rnd) in by if t == a and (b, rnd) in by and by[(b, rnd)]]
    return float(np.median(ratios)) if ratios else None


def summarize(payload: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """One line per (target, concurrency): medians, and the paired ratios the issue's targets are about."""
    rows, first = payload["rows"], next(iter(plan.variants))
    lines = []
    for key in payload["targets"]:
        variant, transport = key.split("/")
        for c in plan.concurrency:
            mine = [r for r in rows if r["target"] == key and r["concurrency"] == c]
            med = {m: float(np.median([r[m] for r in mine])) for m in ("throughput_rps", "p50_ms",
                                                                        "cpu_us_per_request")}
            lines.append({"target": key, "concurrency": c, "rounds": len(mine), **med,
                          "cpu_vs_echo": _paired(rows, key, f"echo/{transport}", c, "cpu_us_per_request"),
                          "p50_vs_first": _paired(rows, key, f"{first}/{transport}", c, "p50_ms"),
                          "throughput_vs_first": _paired(rows, key, f"{first}/{transport}", c, "throughput_rps"),
                          "stream_vs_unary_throughput": (_paired(rows, key, f"{variant}/unary", c, "throughput_rps")
                                                         if transport == "stream" else None),
                          "floor_vs_echo": _echo_plus_ort(payload, variant, transport, c)})
    return lines


def _echo_plus_ort(payload: dict[str, Any], variant: str, transport: str, c: int) -> float | None:
    """The least CPU-vs-echo ratio a server running this model could have: the echo's CPU per request plus
    ONNX Runtime's own CPU per run (in process, the variant's thread count), over the echo's; median over
    rounds. A target below it is below what the model itself costs on this machine."""
    threads = payload["intra_op_threads"].get(variant)
    ort = payload["ort"].get(str(threads))
    echo = [r["cpu_us_per_request"] for r in payload["rows"]
            if r["target"] == f"echo/{transport}" and r["concurrency"] == c and r["cpu_us_per_request"]]
    if not ort or not echo:
        return None
    return float(np.median([(e + ort["cpu_us_per_run"]) / e for e in echo]))


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    """Medians and paired ratios per target, ORT's own CPU per run, the variants and the command."""
    rows = [f"| {s['target']} | {s['concurrency']} | {s['rounds']} | {_f(s['throughput_rps'], 1)} | "
            f"{_f(s['p50_ms'], 3)} | {_f(s['cpu_us_per_request'], 0)} | {_f(s['cpu_vs_echo'])} | "
            f"{_f(s['p50_vs_first'])} | {_f(s['throughput_vs_first'])} | {_f(s['stream_vs_unary_throughput'])} | "
            f"{_f(s.get('floor_vs_echo'))} |"
            for s in payload["summary"]]
    ort = "; ".join(f"{n} thread(s): wall p50 {_f(v['wall_p50_us'], 0)} us, CPU {_f(v['cpu_us_per_run'], 0)} us "
                    "per run" for n, v in payload["ort"].items())
    variants = "; ".join(f"`{n}`: `{shlex.join(a) or '(defaults)'}` ({payload['intra_op_threads'][n]} intra-op "
                         "thread(s))" for n, a in payload["plan"]["variants"].items())
    m = payload["machine"]
    return "\n".join([
        "# tensorwire bench cpu", "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores_usable', '?')} usable cores, load average at start "
        f"{m.get('load_average_at_start')}. Command: `{payload['command']}`", "",
        f"Variants (`tensorwire serve` arguments): {variants}. Model: the 512-wide MLP [1,512] FP32 "
        "(bench/models.py). Echo: tensorwire.echo answering with as many bytes. "
        f"{payload['plan']['rounds']} alternating rounds of {payload['plan']['duration_s']} s per level; figures are "
        "medians over rounds, ratios the median of per-round ratios (CPU vs the echo on the same transport and "
        "concurrency; p50 and throughput vs the first variant on the same transport; stream vs unary of the same "
        "server). Server CPU: user + system of the server's processes from /proc, per successful request.", "",
        "| target | concurrency | rounds | req/s | p50 ms | CPU us/req | CPU vs echo | p50 vs first | "
        "req/s vs first | stream vs unary req/s | echo + ORT vs echo |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"In-process ONNX Runtime, the same MLP, one caller: {ort}. The last column is the least CPU-vs-echo "
        "ratio any server running this model could show: the echo's CPU per request plus ORT's own CPU per run, "
        "over the echo's.",
    ]) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench cpu``."""
    p.add_argument("--variant", action="append", type=parse_variant, default=None, metavar="NAME=ARGS",
                   help="a `tensorwire serve` configuration to measure, repeatable; the first is the reference "
                   "for p50 and throughput ratios (default: default=, the server's defaults)")
    p.add_argument("--concurrency", type=arguments.int_list, default=[1, 8],
                   help="closed-loop concurrencies (default 1,8)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per level (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per level (default 0.5)")
    p.add_argument("--no-streaming", action="store_true", help="unary only (default: unary and streaming)")
    p.add_argument("--out", type=Path, help="result directory, e.g. bench/results/cpu (default: print only)")
    p.add_argument("--quick", action="store_true", help="1 round, 0.5 s levels (a smoke run)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench cpu``: 0 when no request failed, 1 otherwise."""
    variants = dict(args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS])
    plan = Plan(variants=variants, concurrency=args.concurrency, rounds=args.rounds, duration_s=args.duration,
                warmup_s=args.warmup, streaming=not args.no_streaming)
    if args.quick:
        plan.rounds, plan.duration_s, plan.warmup_s, plan.ort_runs = 1, 0.5, 0.2, 50
    payload = measure(plan)
    payload.update(kind="cpu", schema=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine.describe(),
                   command=shlex.join(["tensorwire", "bench", "cpu", *sys.argv[3:]]),
                   plan={**plan.__dict__})
    payload["summary"] = summarize(payload, plan)
    write_payload(payload, markdown(payload), args.out, "cpu")
    return 0 if all(not r["errors"] for r in payload["rows"]) else 1
