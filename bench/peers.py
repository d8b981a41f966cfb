"""`tensorwire bench peers`: tensorwire against the servers a user would otherwise run, by perf_analyzer.

Peers, each serving the same ONNX files with the same ONNX Runtime session options (``timing.cpu_session``:
``--intra-op-threads``, spinning as ``--intra-op-spinning``):
- ``tensorwire``: `tensorwire serve` with its default gRPC front end (``--server-arg`` adds flags);
- ``tensorwire-grpcio``: the same with ``--grpc-frontend grpcio`` (grpcio's own server);
- ``grpcio60``: the 60-line grpcio server (bench/peer_grpcio.py says exactly what it does);
- ``triton``: NVIDIA Triton 2.51's C++ front end with its Python backend running ORT (bench/peer_triton.py).
With ``--pin`` (the default) every server runs on CPU 0 (tensorwire by its ``--cpu-affinity``, the others
by ``taskset``) and perf_analyzer on CPU 1; ``--no-pin`` leaves both to the scheduler and tensorwire to
its defaults (its thread counts included), as a user runs it. Cases run in alternating rounds over every
peer; each case's ratios are taken within a round, then the median over rounds. Server CPU per request is
the server's process tree (Triton's stub processes included) over a perf_analyzer run, divided by the
inference count its ModelStatistics gained.

``tensorwire bench peers [--peer P ...] [--case C ...] [--rounds R] [--no-pin] [--out DIR]``
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

from tensorwire.bench import machine, peer_triton, procstat
from tensorwire.bench.report import write_payload
from tensorwire.bench.triton_perf import DEFAULT_PERF_ANALYZER, Case, run_case

PEERS = ("tensorwire", "tensorwire-grpcio", "grpcio60", "triton")
CASES = [Case("mlp_c8", "mlp", 1, 8), Case("mlp_c1", "mlp", 1, 1), Case("conv_c1", "conv", 1, 1),
         Case("small2k_c8", "small2k", 1, 8)]
# The targets' cases; small2k_c8 (a 2 KB request, next to no compute: what serving costs without the model's run)
# runs when named.
DEFAULT_CASES = ("mlp_c8", "mlp_c1", "conv_c1")
# perf_analyzer's per-step columns (us): the client's, and the server's own from its ModelStatistics.
STEPS = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input", "Server Compute Infer",
         "Server Compute Output", "Client Recv")


@dataclass
class Plan:
    perf_analyzer: Path
    triton: Path
    peers: tuple[str, ...] = PEERS
    cases: tuple[str, ...] = DEFAULT_CASES
    rounds: int = 2
    interval_ms: int = 2000
    max_trials: int = 4
    pin: bool = True
    intra_op_threads: int = 1
    spinning: bool = False
    server_args: tuple[str, ...] = ()
    timeout_s: float = 180.0


@dataclass
class Peer:
    name: str
    address: str
    pids: list[int] = field(default_factory=list)


def _repository(workdir: Path, pin: bool) -> Path:
    """The models, one CPU instance each when pinned (one core); not pinned, the config names no instance
    group, so tensorwire opens what it opens by default (Triton's: two CPU instances)."""
    from tensorwire.bench.models import CPU_CONFIG, conv_model, mlp_model, small_model, write_repository

    config = CPU_CONFIG if pin else "max_batch_size: 8\n"
    return write_repository(workdir / "models", {"conv": (conv_model(), config), "mlp": (mlp_model(), config),
                                                 "small2k": (small_model(), config)})


def _tensorwire_args(plan: Plan, frontend: str) -> list[str]:
    args = ["--grpc-frontend", frontend, "--allow-http=false", *plan.server_args]
    if plan.pin:
        args += ["--cpu-affinity", "0", "--intra-op-threads", str(plan.intra_op_threads)]
        if plan.spinning:
            args += ["--intra-op-spinning"]
    return args


def _start(stack: contextlib.ExitStack, plan: Plan, repo: Path, workdir: Path, name: str) -> Peer:
    """Start one peer; it stops when ``stack`` closes."""
    from tensorwire.launcher import launch, tensorwire_server

    taskset = ["taskset", "-c", "0"] if plan.pin else []
    if name.startswith("tensorwire"):
        frontend = "grpcio" if name == "tensorwire-grpcio" else "core"
        server = stack.enter_context(tensorwire_server(repo, *_tensorwire_args(plan, frontend)))
        address = server.address
    elif name == "grpcio60":
        args = ["-m", "tensorwire.bench.peer_grpcio", "--model-repository", str(repo), "--intra-op-threads",
                str(plan.intra_op_threads), *(["--intra-op-spinning"] if plan.spinning else [])]
        address = stack.enter_context(launch(args, prefix=taskset)).address
    else:
        triton_repo = peer_triton.write_repository(repo, workdir / "triton-models", plan.intra_op_threads,
                                                   plan.spinning)
        address, _ = stack.enter_context(peer_triton.serve(plan.triton, triton_repo, workdir / "triton.log",
                                                           taskset))
    return Peer(name, address, procstat.local_server_pids(address))


def _inference_count(address: str, model: str) -> int:
    import tritonclient.grpc as tc

    with tc.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))


def _outputs(address: str) -> dict[str, np.ndarray]:
    """Each model's answer to one fixed input: every peer must give tensorwire's, bit for bit."""
    import tritonclient.grpc as tc

    rng = np.random.default_rng(11)
    out = {}
    with tc.InferenceServerClient(address) as client:
        for model, shape in (("mlp", (1, 512)), ("conv", (1, 3, 224, 224)), ("small2k", (1, 512))):
            x = rng.standard_normal(shape).astype(np.float32)
            inp = tc.InferInput("input", list(shape), "FP32")
            inp.set_data_from_numpy(x)
            out[model] = client.infer(model, [inp]).as_numpy("output")
    return out


def _differences(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
    """'equal' when every model's answer is the reference's bit for bit, else which differ and by how much."""
    differing = [f"{model} differs (shape {outputs[model].shape} against {ref.shape})"
                 if outputs[model].shape != ref.shape else
                 f"{model} differs (max |diff| {np.abs(outputs[model].astype(np.float64) - ref).max():.2g})"
                 for model, ref in reference.items() if not np.array_equal(outputs[model], ref)]
    return "; ".join(differing) or "equal"


def _run(plan: Plan, peer: Peer, case: Case, workdir: Path, r: int) -> dict[str, Any]:
    """One perf_analyzer run against one peer, with the server's CPU and inference count around it."""
    before_n = _inference_count(peer.address, case.model)
    before = procstat.cpu_times(peer.pids)
    run = run_case(plan.perf_analyzer, peer.address, case, workdir, plan.interval_ms, plan.max_trials,
                   plan.timeout_s, prefix=["taskset", "-c", "1"] if plan.pin else [])
    after = procstat.cpu_times(peer.pids)
    requests = _inference_count(peer.address, case.model) - before_n
    run.update(peer=peer.name, round=r, requests=requests,
               server_cpu=procstat.cpu_per_request(before, after, requests, peer.pids))
    return run


def measure(plan: Plan) -> dict[str, Any]:
    """Start every peer, check their outputs, then run each case on each peer in alternating rounds."""
    cases = [c for c in CASES if c.name in plan.cases]
    with tempfile.TemporaryDirectory(prefix="tensorwire-peers-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        repo = _repository(workdir, plan.pin)
        peers = [_start(stack, plan, repo, workdir, name) for name in plan.peers]
        reference = _outputs(peers[0].address)
        equality = {p.name: _differences(reference, _outputs(p.address)) for p in peers}
        runs = []
        for r in range(plan.rounds):
            order = [(p, c) for c in cases for p in peers]
            for peer, case in order if r % 2 == 0 else order[::-1]:
                runs.append(_run(plan, peer, case, workdir, r))
    return {"equality": {"reference": peers[0].name, **equality}, "runs": runs}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def summarize(payload: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Per case and peer: medians over rounds, and ratios to every other peer taken within each round."""
    figures: dict[tuple[str, str, int], dict[str, float]] = {}
    for run in payload["runs"]:
        if "figures" in run:
            figures[(run["case"], run["peer"], run["round"])] = {
                "throughput": run["figures"]["Inferences/Second"], "p50_us": run["figures"]["p50 latency"],
                "cpu_us": run["server_cpu"]["us_per_request"],
                "steps": {k: v for k, v in run["figures"].items() if k in STEPS}}
    rows = []
    for case in plan.cases:
        for peer in plan.peers:
            mine = {r: f for (c, p, r), f in figures.items() if c == case and p == peer}
            row: dict[str, Any] = {"case": case, "peer": peer, "rounds": len(mine)}
            row.update({k: _median([f[k] for f in mine.values()]) for k in ("throughput", "p50_us", "cpu_us")})
            row["steps_us"] = {k: _median([f["steps"][k] for f in mine.values() if k in f["steps"]]) for k in STEPS}
            for other in plan.peers:
                if other == peer:
                    continue
                theirs = {r: figures.get((case, other, r)) for r in mine}
                for k in ("throughput", "p50_us", "cpu_us"):
                    row[f"{k}_vs_{other}"] = _median([mine[r][k] / t[k] for r, t in theirs.items() if t and t[k]])
            rows.append(row)
    return rows


# (case, metric against a peer, op, bound): the serving loop's targets, pinned and not.
PINNED_TARGETS = [("mlp_c8", "cpu_us_vs_triton", "<=", 0.7), ("mlp_c8", "cpu_us_vs_tensorwire-grpcio", "<=", 0.6),
                  ("mlp_c8", "throughput_vs_triton", ">=", 1.3), ("mlp_c1", "p50_us_vs_triton", "<=", 1.0),
                  ("conv_c1", "throughput_vs_triton", ">=", 1.0)]
UNPINNED_TARGETS = [("mlp_c1", "throughput_vs_grpcio60", ">=", 1.0), ("mlp_c8", "throughput_vs_grpcio60", ">=", 1.3)]


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _targets(rows: list[dict[str, Any]], pinned: bool) -> list[str]:
    lines = []
    for case, key, op, bound in PINNED_TARGETS if pinned else UNPINNED_TARGETS:
        row = next((r for r in rows if r["case"] == case and r["peer"] == "tensorwire"), None)
        value = row.get(key) if row else None
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        lines.append(f"| {case} | tensorwire {key.replace('_vs_', ' / ')} | {_f(value, 2)} | {op} {bound} | "
                     f"{'-' if met is None else 'met' if met else 'NOT met'} |")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    """The figures per case and peer, tensorwire's ratios against the targets, equality, the commands."""
    rows, plan = payload["summary"], payload["plan"]
    table = [f"| {r['case']} | {r['peer']} | {r['rounds']} | {_f(r['throughput'])} | {_f(r['p50_us'])} | "
             f"{_f(r['cpu_us'])} |" for r in rows]
    steps = [f"| {r['case']} | {r['peer']} | " + " | ".join(_f(r["steps_us"].get(k)) for k in STEPS) + " |"
             for r in rows]
    errors = [f"- {r['peer']} {r['case']} round {r['round']}: {r['error'][:200]}"
              for r in payload["runs"] if "error" in r]
    commands = {}
    for run in payload["runs"]:
        commands.setdefault(run["case"], run["command"])
    return "\n".join([
        "# tensorwire bench peers", "",
        f"Machine: {machine.one_line(payload['machine'])}. {payload['perf_analyzer_version']}. "
        f"Command: `{payload['command']}`", "",
        ("Pinned: every server on CPU 0, perf_analyzer on CPU 1; " if plan["pin"] else "Not pinned; ")
        + f"ORT intra-op threads {plan['intra_op_threads']}, spinning {'on' if plan['spinning'] else 'off'} "
        "for the peers" + (" and tensorwire" if plan["pin"] else " (tensorwire at its defaults)") + ". "
        "Figures are medians over rounds; throughput in inferences/s, p50 in us, server CPU in us per request.", "",
        "| case | peer | rounds | infer/s | p50 us | server CPU us/req |", "| --- | --- | --- | --- | --- | --- |",
        *table, "",
        "Where a request's time goes, per perf_analyzer (us, medians; the server columns come from each server's "
        "ModelStatistics, which the 60-line server does not keep):", "",
        "| case | peer | " + " | ".join(STEPS) + " |", "| --- | --- |" + " --- |" * len(STEPS), *steps, "",
        "Targets (each ratio the median of per-round ratios):", "",
        "| case | ratio | value | target | |", "| --- | --- | --- | --- | --- |", *_targets(rows, plan["pin"]), "",
        "Each peer's outputs against the first peer's, bit for bit (one fixed input per model): "
        + ", ".join(f"{k}: {v}" for k, v in payload["equality"].items() if k != "reference"), "",
        *(["Errors:", "", *errors, ""] if errors else []),
        "perf_analyzer commands (first round; later rounds differ in the address and CSV path):", "",
        *[f"- {name}: `{cmd}`" for name, cmd in commands.items()],
    ]) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench peers``."""
    p.add_argument("--peer", dest="peers", action="append", choices=PEERS, default=[],
                   help=f"a server to measure, repeatable; the first is the reference (default: {', '.join(PEERS)})")
    p.add_argument("--case", dest="cases", action="append", choices=[c.name for c in CASES], default=[],
                   help=f"run only this case, repeatable (default: {', '.join(DEFAULT_CASES)}; small2k_c8, a 2 KB "
                   "request to a model with next to no compute, when named)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer --measurement-interval (default 2000)")
    p.add_argument("--max-trials", type=int, default=4, help="perf_analyzer --max-trials (default 4)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="leave servers and perf_analyzer unpinned and tensorwire at its defaults (default: pinned)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT intra-op threads of every session (default 1)")
    p.add_argument("--intra-op-spinning", action="store_true", help="ORT intra-op spinning on (default off)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tensorwire serve` argument for the tensorwire peers, repeatable (default: none)")
    p.add_argument("--perf-analyzer", type=Path, default=DEFAULT_PERF_ANALYZER,
                   help=f"perf_analyzer (default: {DEFAULT_PERF_ANALYZER}; bash bench/perf_analyzer_env.sh builds it)")
    p.add_argument("--triton", type=Path, default=peer_triton.DEFAULT_TRITON,
                   help=f"Triton's directory (default: {peer_triton.DEFAULT_TRITON}; "
                   "bash bench/triton_env.sh builds it)")
    p.add_argument("--out", type=Path, help="result directory, e.g. bench/results/peers (default: print only)")
    p.add_argument("--quick", action="store_true", help="1 round, 500 ms windows, 3 trials (a smoke run)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench peers``: 0 when every run succeeded, 1 if some failed, 2 when it could not start."""
    from tensorwire.bench.triton_perf import perf_analyzer_version

    plan = Plan(args.perf_analyzer, args.triton, peers=tuple(args.peers) or PEERS,
                cases=tuple(args.cases) or Plan.cases, rounds=args.rounds, interval_ms=args.interval_ms,
                max_trials=args.max_trials, pin=args.pin, intra_op_threads=args.intra_op_threads,
                spinning=args.intra_op_spinning, server_args=tuple(args.server_arg))
    if args.quick:
        plan.rounds, plan.interval_ms, plan.max_trials = 1, 500, 3
    version, problem = perf_analyzer_version(plan.perf_analyzer)
    if problem is None and "triton" in plan.peers:
        problem = peer_triton.check(plan.triton)
    if problem is not None:
        print(f"tensorwire bench peers: {problem}", file=sys.stderr)
        return 2
    payload = measure(plan)
    payload.update(kind="peers", schema=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine.describe(),
                   perf_analyzer_version=version,
                   command=shlex.join(["tensorwire", "bench", "peers", *sys.argv[3:]]),
                   plan={k: str(v) if isinstance(v, Path) else v for k, v in plan.__dict__.items()})
    payload["summary"] = summarize(payload, plan)
    write_payload(payload, markdown(payload), args.out, "peers")
    return 0 if all("error" not in r for r in payload["runs"]) else 1
