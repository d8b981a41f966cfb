"""`tensorwire bench resilience`: what stalled clients take from everyone else, measured.

For each scenario (N half-sent ModelInfer calls + M idle ModelStreamInfer streams, from bench/stall.py),
a fresh server is started, the stalled calls are opened, and a well-behaved client then alternates a
grpc.health.v1 Check and a ModelInfer on the small MLP for ``--duration`` seconds: its errors by status,
p50 and p99, the server's thread count and RSS while stalled, and how long after the stalled clients go
away the server answers again. Then one of two workers is killed while clients on the other keep calling:
how long until a replacement listens, and what the survivors' clients saw. Then the metrics port is
flooded (bench/metrics_flood.py): ServerLive during and after 2,000 half-sent metrics requests closed at
once, and the thread count and SIGTERM time with 9,000 idle metrics connections. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorwire.bench import metrics_flood
from tensorwire.bench.models import mlp_model, write_model
from tensorwire.bench.procnet import client_ports, descendants, listening, worker_of
from tensorwire.bench.procstat import status_field
from tensorwire.bench.report import write_payload
from tensorwire.bench.stall import stalled
from tensorwire.bench.stats import percentile_ms
from tensorwire.client import InferenceClient, encode_request
from tensorwire.errors import RequestError
from tensorwire.launcher import tensorwire_server

SCENARIOS = ((0, 0), (300, 100), (1000, 200))
CASES = ("stalls", "kill", "metrics")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds the well-behaved client probes each scenario (default 10)")
    p.add_argument("--out", type=Path, default=None, help="directory for resilience.json / .md (default: none)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tensorwire serve` argument, repeatable, e.g. --server-arg=--handler-threads=64 "
                   "(default: none)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated subset of {', '.join(CASES)} (default: all; a record is one whole run)")


def run(args: argparse.Namespace) -> int:
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    payload = run_scenarios(args.duration, args.server_arg, args.out, cases)
    return 0 if payload else 1


def _command() -> str:
    """The command line that produced this run, as a reader would type it again."""
    argv = sys.argv[1:]
    flags = argv[argv.index("resilience") + 1:] if "resilience" in argv else argv
    return shlex.join(["tensorwire", "bench", "resilience", *flags])


def _proc_status(pid: int) -> dict[str, int]:
    return {"threads": status_field(pid, "Threads"), "rss_mib": status_field(pid, "VmRSS") // 1024}


def _probe(address: str, request: bytes, duration: float) -> dict:
    """Health check + inference, alternating, for ``duration`` seconds (each call times out after 10 s)."""
    errors: collections.Counter[str] = collections.Counter()
    health_s: list[float] = []
    infer_s: list[float] = []
    with grpc.insecure_channel(address) as channel, InferenceClient(address, timeout=10) as client:
        health = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            for calls, fn in ((health_s, lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)),
                              (infer_s, lambda: client.infer_bytes(request))):
                t0 = time.perf_counter()
                try:
                    fn()
                    calls.append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    errors[exc.code().name] += 1
                except RequestError as exc:  # tensorwire's client: the status is its class's code
                    errors[exc.code.name] += 1
    return {"probes": len(health_s) + len(infer_s) + sum(errors.values()), "errors": dict(errors),
            "health_p50_ms": percentile_ms(health_s, 50), "health_p99_ms": percentile_ms(health_s, 99),
            "infer_p50_ms": percentile_ms(infer_s, 50), "infer_p99_ms": percentile_ms(infer_s, 99)}


def _recovery_s(address: str, request: bytes, limit_s: float = 60.0) -> float | None:
    """Seconds until 20 inferences in a row succeed after the stalled clients closed (None: not in time)."""
    start = time.monotonic()
    ok = 0
    with InferenceClient(address, timeout=5) as client:
        while time.monotonic() - start < limit_s:
            try:
                client.infer_bytes(request)
                ok += 1
                if ok >= 20:
                    return time.monotonic() - start
            except Exception:
                ok = 0
                time.sleep(0.05)
    return None


def _scenario(repo: Path, half_sent: int, idle: int, duration: float, server_args: list[str]) -> dict:
    request = encode_request("mlp", {"input": np.ones((1, 512), np.float32)})
    with tensorwire_server(repo, *server_args) as server:
        with stalled(server.address, half_sent, idle) as (calls, streams):
            time.sleep(2.0)  # let the server take them all in
            status = _proc_status(server.process.pid)
            row = {"half_sent": half_sent, "idle_streams": idle, **_probe(server.address, request, duration),
                   "server_threads": status["threads"], "server_rss_mib": status["rss_mib"],
                   "stalled_refused": calls.ended + streams.ended}
        row["recovered_after_s"] = _recovery_s(server.address, request)
    return row


def _workers(server) -> list[int]:
    port = int(server.address.rsplit(":", 1)[1])
    return [pid for pid in descendants(server.process.pid) if listening(pid, port)]


def worker_kill(repo: Path, server_args: list[str], timeout_s: float = 60.0) -> dict:
    """SIGKILL one of two workers while clients on the other keep calling: seconds until a replacement
    listens, and the failures seen on connections to the surviving worker."""
    request = encode_request("mlp", {"input": np.ones((1, 512), np.float32)})
    with tensorwire_server(repo, "--workers", "2", *server_args) as server:
        port = int(server.address.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout_s
        while len(_workers(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _workers(server)
        clients = []
        for _ in range(8):  # a connection each, so that both workers get some
            before = client_ports(port)
            client = InferenceClient(server.address, timeout=30, options=[("grpc.use_local_subchannel_pool", 1)])
            client.infer_bytes(request)
            clients.append((client, (client_ports(port) - before).pop()))
        victim = worker_of(clients[0][1], port, workers)
        survivors = [c for c, local in clients if worker_of(local, port, workers) != victim]
        failures, calls, stop = [], [0], threading.Event()

        def keep_calling(client: InferenceClient) -> None:
            while not stop.is_set():
                try:
                    client.infer_bytes(request)
                    calls[0] += 1
                except RequestError as exc:
                    failures.append(exc.code.name)

        threads = [threading.Thread(target=keep_calling, args=(c,)) for c in survivors]
        for t in threads:
            t.start()
        time.sleep(0.5)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() < killed + timeout_s:
            now = _workers(server)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.01)
        replaced_s = time.monotonic() - killed
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for c, _ in clients:
            c.close()
    return {"survivor_connections": len(survivors), "survivor_calls": calls[0], "survivor_failures": len(failures),
            "replacement_listening_after_s": replaced_s}


def _markdown(rows: list[dict], server_args: list[str]) -> str:
    head = ("| half-sent calls | idle streams | probes | errors | health p50 / p99 ms | infer p50 / p99 ms | "
            "server threads | server RSS MiB | stalled calls refused | answering again after |\n" + "|---" * 10 + "|")
    lines = [f"server arguments: {' '.join(server_args) or '(defaults)'}", "", head]
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        recovered = "not within 60 s" if r["recovered_after_s"] is None else f"{r['recovered_after_s']:.2f} s"
        lines.append(f"| {r['half_sent']} | {r['idle_streams']} | {r['probes']} | {errors} | "
                     f"{r['health_p50_ms']:.2f} / {r['health_p99_ms']:.2f} | {r['infer_p50_ms']:.2f} / "
                     f"{r['infer_p99_ms']:.2f} | {r['server_threads']} | {r['server_rss_mib']} | "
                     f"{r['stalled_refused']} | {recovered} |")
    return "\n".join(lines)


def _repository(tmp: str) -> Path:
    return write_model(Path(tmp) / "models", "mlp", mlp_model(), "max_batch_size: 8\n").parent


def run_scenarios(duration: float, server_args: list[str], out: Path | None,
                  cases: list[str] | tuple[str, ...] = CASES) -> dict:
    """Run ``cases`` and, with ``out``, write them as one record (command, date, machine, every figure)."""
    from tensorwire.bench.machine import describe

    payload: dict = {"kind": "resilience", "command": _command(),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "machine": describe(), "rows": []}
    parts = []
    with tempfile.TemporaryDirectory(prefix="tensorwire-bench-") as tmp:
        repo = _repository(tmp)
        if "stalls" in cases:
            for half_sent, idle in SCENARIOS:
                payload["rows"].append(_scenario(repo, half_sent, idle, duration, server_args))
                print(_markdown(payload["rows"][-1:], server_args).splitlines()[-1], flush=True)
            parts.append(_markdown(payload["rows"], server_args))
        if "kill" in cases:
            kill = worker_kill(repo, server_args)
            payload["rows"].append({"worker_kill": kill})
            parts.append("kill -9 of one of two workers: a replacement listened after "
                         f"{kill['replacement_listening_after_s']:.2f} s; {kill['survivor_failures']} failed of "
                         f"{kill['survivor_calls']} calls on the {kill['survivor_connections']} connections to "
                         "the surviving worker")
        if "metrics" in cases:
            payload["metrics_flood"] = metrics_flood.run_cases(repo, server_args)
            parts.append(metrics_flood.markdown(payload["metrics_flood"]))
    text = f"`{payload['command']}` ({payload['date']})\n\n" + "\n\n".join(parts) + "\n"
    if out:
        write_payload(payload, text, out, "resilience")
    else:
        print(text)
    return payload


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
