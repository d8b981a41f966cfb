"""Operations figures (issue 14): the metrics endpoint's cost on the served hot path, and how long a
change in a polled repository takes to serve.

    python -m tensorwire.bench.operations metrics --out bench/results/metrics
    python -m tensorwire.bench.operations metrics-designs --out bench/results/metrics
    python -m tensorwire.bench.operations poll --out bench/results/poll

``metrics``: two servers of one tiny model (add_sub, 1x16 FP32: the server's own cost dominates, so any
metrics cost shows), one with ``--allow-metrics=false``, one with metrics on and scraped every second
(Prometheus' usual interval is 15 s: this is the pessimistic case); closed-loop rounds alternate between
them and the medians of the rounds are compared. ``poll``: a server polling every P seconds; a new version
is renamed into the repository (the documented recipe) and the time until a client is answered by it is
measured, several times per period.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.bench.load import LoadSettings, encode, run_level
from tensorwire.bench.procstat import cpu_seconds
from tensorwire.launcher import tensorwire_server


def _add_sub(offset: float = 0.0):
    import onnx
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["S"]), helper.make_node("Add", ["S", "OFFSET"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])], "add_sub",
        [vi("INPUT0", f, ["batch", 16]), vi("INPUT1", f, ["batch", 16])],
        [vi("OUTPUT0", f, ["batch", 16]), vi("OUTPUT1", f, ["batch", 16])],
        initializer=[helper.make_tensor("OFFSET", f, [], [offset])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _repository(root: Path) -> Path:
    (root / "add_sub" / "1").mkdir(parents=True)
    (root / "add_sub" / "1" / "model.onnx").write_bytes(_add_sub())
    (root / "add_sub" / "config.pbtxt").write_text("max_batch_size: 8\n")
    return root


def _scraper(url: str, stop: threading.Event, period_s: float) -> None:
    while not stop.wait(period_s):
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()


def run_metrics_cost(rounds: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """Alternating closed-loop rounds against metrics off and on; medians of p50 and throughput."""
    request = encode("add_sub", {n: ("FP32", np.ones((1, 16), np.float32)) for n in ("INPUT0", "INPUT1")})
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repository(Path(tmp) / "models")
        # one intra-op thread each: the load-time thread choice is timed, and must not differ between the two
        fixed = ("--intra-op-threads", "1", "--inter-op-threads", "1")
        with tensorwire_server(repo, "--allow-metrics=false", *fixed) as off, tensorwire_server(repo, *fixed) as on:
            arms: dict[str, list[dict]] = {"off": [], "on": []}
            for r in range(rounds):
                for arm in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    server = off if arm == "off" else on
                    stop = threading.Event()
                    scraper = threading.Thread(target=_scraper, args=(on.metrics_url, stop, 1.0), daemon=True)
                    if arm == "on":
                        scraper.start()
                    s = LoadSettings(target=server.address, model="add_sub", duration_s=seconds, warmup_s=0.5,
                                     processes=1, progress=False)
                    cpu0 = cpu_seconds(server.process.pid)
                    level = run_level(s, request, "closed", concurrency=concurrency)
                    cpu = cpu_seconds(server.process.pid) - cpu0  # warm-up requests included in both arms alike
                    stop.set()
                    arms[arm].append({"p50_ms": level["latency"]["p50_ms"], "rps": level["throughput_rps"],
                                      "errors": level["errors"], "server_cpu_us_per_request": 1e6 * cpu / level["ok"]})
    out: dict[str, Any] = {"rounds": arms, "concurrency": concurrency, "seconds_per_round": seconds}
    for arm in ("off", "on"):
        out[f"{arm}_p50_ms"] = statistics.median(x["p50_ms"] for x in arms[arm])
        out[f"{arm}_rps"] = statistics.median(x["rps"] for x in arms[arm])
    out["p50_change_pct"] = 100 * (out["on_p50_ms"] / out["off_p50_ms"] - 1)
    out["throughput_change_pct"] = 100 * (out["on_rps"] / out["off_rps"] - 1)
    # each round's on/off pair ran back to back: their ratio cancels the slower drifts of a shared machine
    out["median_paired_p50_change_pct"] = 100 * (statistics.median(
        a["p50_ms"] / b["p50_ms"] for a, b in zip(arms["on"], arms["off"])) - 1)
    out["median_paired_throughput_change_pct"] = 100 * (statistics.median(
        a["rps"] / b["rps"] for a, b in zip(arms["on"], arms["off"])) - 1)
    for arm in ("off", "on"):  # server CPU per request: what a shared machine's other load disturbs least
        out[f"{arm}_server_cpu_us_per_request"] = statistics.median(x["server_cpu_us_per_request"] for x in arms[arm])
    on_cpu, off_cpu = out["on_server_cpu_us_per_request"], out["off_server_cpu_us_per_request"]
    out["server_cpu_change_pct"] = 100 * (on_cpu / off_cpu - 1)
    return out


_DESIGN_SNIPPET = """
import os, sys, time
from prometheus_client import CollectorRegistry, Counter, Histogram
from tensorwire.server.statistics import LATENCY_BUCKETS_US, ModelStatistics, RequestTimes
mode = sys.argv[1]
n = int(sys.argv[2])
if mode.startswith("tensorwire"):
    s = ModelStatistics(histograms=mode == "tensorwire")
    t = RequestTimes(1000, 2000, 30000, 4000)
    def one():
        s.begin(); s.record_success(1, 150000, t); s.record_execution(1, t)
else:
    reg = CollectorRegistry()
    counters = [Counter(f"c{i}", "c", ["model", "version"], registry=reg).labels("m", "1") for i in range(8)]
    hists = [Histogram(f"h{i}", "h", ["model", "version"], buckets=LATENCY_BUCKETS_US, registry=reg)
             .labels("m", "1") for i in range(4)]
    def one():
        for c in counters:
            c.inc()
        for h in hists:
            h.observe(1234)
blocks = []
for _ in range(10):  # this thread's CPU time: other processes on a shared machine do not count
    t0 = time.thread_time_ns()
    for _ in range(n // 10):
        one()
    blocks.append((time.thread_time_ns() - t0) / (n // 10))
print(min(blocks))
"""


def run_metrics_designs(calls: int) -> dict[str, Any]:
    """Per-request CPU cost (this thread's CPU time, best of 10 blocks) of three ways to count a request for
    Prometheus, each in a fresh interpreter: tensorwire's (the statistics it keeps anyway, plus bucket
    counts; also without the buckets, i.e. metrics off), prometheus-client's metric objects (8 counters + 4
    histograms, as Triton's set needs), and the same in multiprocess mode (mmapped files)."""
    import subprocess

    out: dict[str, Any] = {"calls": calls}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode, env in (("tensorwire_statistics_metrics_off", "tensorwire-off", {}),
                                ("tensorwire_statistics", "tensorwire", {}),
                                ("prometheus_client", "client", {}),
                                ("prometheus_client_multiprocess", "client", {"PROMETHEUS_MULTIPROC_DIR": tmp})):
            done = subprocess.run([sys.executable, "-c", _DESIGN_SNIPPET, mode, str(calls)], capture_output=True,
                                  text=True, check=True, env={**os.environ, **env})
            out[f"{name}_ns_per_request"] = float(done.stdout.strip())
    return out


def run_poll_delay(periods: list[float], changes: int) -> dict[str, Any]:
    """Seconds from renaming a new version into place to the first answer from it, per poll period."""
    import tritonclient.grpc as grpcclient

    results = {}
    for period in periods:
        with tempfile.TemporaryDirectory() as tmp:
            repo = _repository(Path(tmp) / "models")
            with tensorwire_server(repo, "--model-control-mode", "poll", "--repository-poll-secs", str(period)) as s:
                client = grpcclient.InferenceServerClient(s.address)
                inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
                for t in inputs:
                    t.set_data_from_numpy(np.zeros((1, 16), np.float32))
                delays = []
                for k in range(2, changes + 2):
                    staging = Path(tmp) / f"staging-{k}"
                    staging.mkdir()
                    (staging / "model.onnx").write_bytes(_add_sub(float(k)))
                    time.sleep((k * 0.37 % 1.0) * period)  # changes land at different points of the cycle
                    os.rename(staging, repo / "add_sub" / str(k))
                    t0 = time.monotonic()
                    while client.infer("add_sub", inputs).as_numpy("OUTPUT0")[0, 0] != k:
                        if time.monotonic() - t0 > 10 * period + 60:
                            raise TimeoutError(f"version {k} not served")
                        time.sleep(0.01)
                    delays.append(time.monotonic() - t0)
        results[str(period)] = {"delays_s": delays, "max_s": max(delays), "median_s": statistics.median(delays),
                                "max_in_periods": max(delays) / period}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensorwire.bench.operations", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("metrics", help="served p50 and throughput with metrics on vs off")
    m.add_argument("--rounds", type=int, default=6, help="alternating rounds per arm (default 6)")
    m.add_argument("--seconds", type=float, default=5.0, help="seconds per round (default 5)")
    m.add_argument("--concurrency", type=int, default=4, help="closed-loop callers (default 4)")
    m.add_argument("--out", type=Path, required=True, help="directory for metrics.json")
    d = sub.add_parser("metrics-designs", help="per-request cost of three ways to count for Prometheus")
    d.add_argument("--calls", type=int, default=100_000, help="timed calls per design (default 100000)")
    d.add_argument("--out", type=Path, required=True, help="directory for metrics-designs.json")
    q = sub.add_parser("poll", help="delay from a renamed-in version to its first answer")
    q.add_argument("--periods", default="1,2", help="poll periods in seconds, comma-separated (default 1,2)")
    q.add_argument("--changes", type=int, default=5, help="versions added per period (default 5)")
    q.add_argument("--out", type=Path, required=True, help="directory for poll.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "metrics":
        result = run_metrics_cost(args.rounds, args.seconds, args.concurrency)
    elif args.what == "metrics-designs":
        result = run_metrics_designs(args.calls)
    else:
        result = run_poll_delay([float(x) for x in args.periods.split(",")], args.changes)
    result["command"] = "python -m tensorwire.bench.operations " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / f"{args.what}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
