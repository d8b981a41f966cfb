"""`tensorwire bench http-servers`: the HTTP front end beside gRPC on one server, and perf_analyzer over both.

One tensorwire server, its HTTP port (binary tensor data, the fast path, and for the record JSON data) and its
gRPC port as the baseline. Closed loop at each concurrency, every client thread on its own keep-alive
connection: p50 and throughput, and the server's CPU per request (user + system of its process, /proc).
With ``--perf-analyzer``, NVIDIA's perf_analyzer -i http against -i grpc (the acceptance figures). Figures go
to bench/results/http/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from tensorwire.bench.models import REQUEST_MODELS as MODELS
from tensorwire.bench.models import write_repository
from tensorwire.bench.procnet import free_port
from tensorwire.bench.procstat import cpu_seconds
from tensorwire.bench.stats import summarize
from tensorwire.client import InferenceClient, encode_request
from tensorwire.launcher import tensorwire_server


def http_request(model: str, input_name: str, x: np.ndarray, binary: bool) -> tuple[bytes, dict]:
    """(body, headers) of a KServe v2 REST inference request for ``x``, binary tensor data or JSON."""
    inp: dict = {"name": input_name, "shape": list(x.shape), "datatype": "FP32"}
    if binary:
        inp["parameters"] = {"binary_data_size": x.nbytes}
        header = json.dumps({"inputs": [inp], "parameters": {"binary_data_output": True}}).encode()
        return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}
    inp["data"] = x.reshape(-1).tolist()
    return json.dumps({"inputs": [inp]}).encode(), {"Content-Type": "application/json"}


def _closed_loop(make_call, concurrency: int, requests: int) -> tuple[list[float], float]:
    """``requests`` calls spread over ``concurrency`` threads, each with its own caller; (latencies, wall s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per = requests // concurrency

    def worker() -> None:
        call = make_call()
        call()  # warm the connection
        mine = []
        for _ in range(per):
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def _http_caller(port: int, model: str, body: bytes, headers: dict):
    def make():
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def call() -> None:
            conn.request("POST", f"/v2/models/{model}/infer", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")

        return call

    return make


def _grpc_caller(address: str, request: bytes):
    def make():
        client = InferenceClient(address)
        return lambda: client.infer_bytes(request)

    return make


def _measure(server, label: str, make_call, concurrency: int, requests: int) -> dict:
    pid = server.process.pid
    cpu0 = cpu_seconds(pid)
    latencies, wall = _closed_loop(make_call, concurrency, requests)
    cpu = cpu_seconds(pid) - cpu0
    stats = summarize(latencies)
    return {"case": label, "concurrency": concurrency, "requests": len(latencies),
            "p50_ms": stats["p50_ms"], "p99_ms": stats.get("p99_ms"), "throughput_rps": len(latencies) / wall,
            "server_cpu_us_per_request": cpu / max(len(latencies), 1) * 1e6}


def run_clients(repo: Path, requests: int, concurrencies: list[int]) -> list[dict]:
    rows = []
    port = free_port()
    with tensorwire_server(repo, "--http-port", str(port)) as server:
        for model, (_, input_name, shape) in MODELS.items():
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            cases = {"http binary": _http_caller(port, model, *http_request(model, input_name, x, True))}
            if model == "mlp":
                cases["http json"] = _http_caller(port, model, *http_request(model, input_name, x, False))
            cases["grpc"] = _grpc_caller(server.address, encode_request(model, {input_name: x}))
            for label, make in cases.items():
                for c in concurrencies:
                    n = requests if model == "mlp" else max(requests // 5, 8 * c)
                    rows.append({"model": model, **_measure(server, label, make, c, n)})
    return rows


# perf_analyzer's cases (the acceptance figures): MLP [1,512] at concurrency 8, the 3x224x224 conv at 1.
PA_CASES = (("mlp", 8), ("image_3x224x224", 1))


def _model_executions(http_port: int, model: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", http_port)
    conn.request("GET", f"/v2/models/{model}/stats")
    stats = json.loads(conn.getresponse().read())["model_stats"][0]
    conn.close()
    return int(stats.get("inference_count", 0))


def run_perf_analyzer(pa: Path, repo: Path, rounds: int, interval_ms: int, server_args: list[str] = ()) -> list[dict]:
    """perf_analyzer -i grpc and -i http (binary tensor data) against one server, alternating in
    rounds; server CPU per request from /proc over each run and the model's inference count."""
    from tensorwire.bench.triton_perf import parse_csv

    rows = []
    port = free_port()
    with tensorwire_server(repo, "--http-port", str(port), *server_args) as server:
        for r in range(rounds):
            for model, concurrency in PA_CASES:
                for protocol, url in (("grpc", server.address), ("http", f"127.0.0.1:{port}")):
                    csv_path = repo.parent / f"pa-{model}-{protocol}-{r}.csv"
                    cmd = [str(pa), "-m", model, "-u", url, "-i", protocol, "-b", "1", "--concurrency-range",
                           str(concurrency), "--measurement-interval", str(interval_ms), "--stability-percentage",
                           "100", "--max-trials", "3", "-f", str(csv_path)]
                    cpu0, n0 = cpu_seconds(server.process.pid), _model_executions(port, model)
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    cpu, n = cpu_seconds(server.process.pid) - cpu0, _model_executions(port, model) - n0
                    if proc.returncode != 0:
                        raise RuntimeError(f"{shlex.join(cmd)} failed: {proc.stderr[-800:] or proc.stdout[-800:]}")
                    f = parse_csv(csv_path.read_text())
                    rows.append({"round": r, "model": model, "protocol": protocol, "concurrency": concurrency,
                                 "throughput_rps": f["Inferences/Second"], "p50_ms": f["p50 latency"] / 1000,
                                 "p99_ms": f.get("p99 latency", 0) / 1000,
                                 "server_cpu_us_per_request": cpu / max(n, 1) * 1e6, "command": shlex.join(cmd)})
    return rows


def pa_markdown(rows: list[dict]) -> str:
    lines = ["| model | protocol | concurrency | req/s (median of rounds) | p50 ms | server CPU us/req |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for model, concurrency in PA_CASES:
        for protocol in ("grpc", "http"):
            mine = [r for r in rows if r["model"] == model and r["protocol"] == protocol]
            if not mine:
                continue
            med = {k: float(np.median([r[k] for r in mine]))
                   for k in ("throughput_rps", "p50_ms", "server_cpu_us_per_request")}
            lines.append(f"| {model} | {protocol} | {concurrency} | {med['throughput_rps']:.0f} | "
                         f"{med['p50_ms']:.3f} | {med['server_cpu_us_per_request']:.0f} |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | case | concurrency | p50 ms | p99 ms | req/s | server CPU us/req |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['case']} | {r['concurrency']} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['throughput_rps']:.0f} | {r['server_cpu_us_per_request']:.0f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=2000, help="requests per case and concurrency (default 2000)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads (default 1 8)")
    p.add_argument("--out", type=Path, default=None,
                   help="write results.json and results.md (perf_analyzer.json, .md) here (default: print only)")
    p.add_argument("--perf-analyzer", type=Path, default=None, metavar="PATH",
                   help="also run NVIDIA's perf_analyzer -i grpc vs -i http (bash bench/perf_analyzer_env.sh builds "
                   "it; default: not run)")
    p.add_argument("--rounds", type=int, default=3, help="perf_analyzer rounds, alternating protocols (default 3)")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer --measurement-interval (default 2000)")
    p.add_argument("--skip-engines", "--skip-clients", action="store_true",
                   help="only the perf_analyzer comparison, not the Python clients' runs")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tensorwire serve` argument for the perf_analyzer server (repeatable; default: none)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "models",
                                {name: (build(), "max_batch_size: 8\n") for name, (build, _, _) in MODELS.items()})
        rows = [] if args.skip_engines else run_clients(repo, args.requests, args.concurrency)
        pa_rows = run_perf_analyzer(args.perf_analyzer, repo, args.rounds, args.interval_ms, args.server_arg) \
            if args.perf_analyzer else []
    tables = ([markdown(rows)] if rows else []) + ([pa_markdown(pa_rows)] if pa_rows else [])
    print("\n\n".join(tables))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        if rows:
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
            (args.out / "results.md").write_text(markdown(rows) + "\n")
        if pa_rows:
            (args.out / "perf_analyzer.json").write_text(json.dumps(pa_rows, indent=1))
            (args.out / "perf_analyzer.md").write_text(pa_markdown(pa_rows) + "\n")
    return 0
