"""Operations figures (issue 14): the metrics endpoint's cost on the served hot path, and how long a
change in a polled repository takes to serve.

    python -m tensorwire.bench.operations metrics --out bench/results/metrics
    python -m tensorwire.bench.operations metrics-inprocess --out bench/results/metrics
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
from tensorwire.bench.processes import tensorwire_server


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
        with tensorwire_server(repo, "--allow-metrics=false") as off, tensorwire_server(repo) as on:
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
                    level = run_level(s, request, "closed", concurrency=concurrency)
                    stop.set()
                    arms[arm].append({"p50_ms": level["latency"]["p50_ms"], "rps": level["throughput_rps"],
                                      "errors": level["errors"]})
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
    return out


def run_metrics_inprocess(blocks: int, per_block: int) -> dict[str, Any]:
    """The hot path alone: ``Model.infer`` on two loaded copies of add_sub, one counting into the histograms
    (metrics on) and one not, in alternating blocks in one process; per-call medians of the blocks."""
    from tensorwire.proto.messages import InferRequest, InputTensor, RequestedOutput
    from tensorwire.server.repository import ModelRepository
    from tensorwire.server.settings import ServerSettings

    x = np.ones((1, 16), np.float32).tobytes()
    request = InferRequest(model_name="add_sub", inputs=[InputTensor("INPUT0", "FP32", (1, 16)),
                                                         InputTensor("INPUT1", "FP32", (1, 16))],
                           outputs=[RequestedOutput("OUTPUT0"), RequestedOutput("OUTPUT1")], raw_input_contents=[x, x])
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repository(Path(tmp) / "models")
        models = {}
        for arm, on in (("off", False), ("on", True)):
            r = ModelRepository(ServerSettings(model_repository=repo, allow_metrics=on, intra_op_threads=1))
            models[arm] = (r, r.load("add_sub").latest())
        per_call: dict[str, list[float]] = {"off": [], "on": []}
        for b in range(blocks):
            for arm in (("off", "on") if b % 2 == 0 else ("on", "off")):
                model = models[arm][1]
                t0 = time.perf_counter_ns()
                for _ in range(per_block):
                    model.infer(request)
                per_call[arm].append((time.perf_counter_ns() - t0) / per_block / 1000)
        for r, _ in models.values():
            r.close()
    ratios = [on / off for on, off in zip(per_call["on"], per_call["off"])]
    return {"blocks": blocks, "calls_per_block": per_block, "off_us_per_call": statistics.median(per_call["off"]),
            "on_us_per_call": statistics.median(per_call["on"]), "median_paired_change_pct":
            100 * (statistics.median(ratios) - 1), "per_block_us": per_call}


_DESIGN_SNIPPET = """
import os, sys, timeit
from prometheus_client import CollectorRegistry, Counter, Histogram
from tensorwire.server.statistics import LATENCY_BUCKETS_US, ModelStatistics, RequestTimes
mode = sys.argv[1]
n = int(sys.argv[2])
if mode == "tensorwire":
    s = ModelStatistics(histograms=True)
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
print(min(timeit.repeat(one, number=n, repeat=5)) / n * 1e9)
"""


def run_metrics_designs(calls: int) -> dict[str, Any]:
    """Per-request cost of three ways to count a request for Prometheus, each in a fresh interpreter:
    tensorwire's (the statistics it keeps anyway, plus bucket counts), prometheus-client's metric objects
    (8 counters + 4 histograms, as Triton's set needs), and the same in multiprocess mode (mmapped files)."""
    import subprocess

    out: dict[str, Any] = {"calls": calls}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode, env in (("tensorwire_statistics", "tensorwire", {}),
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
    i = sub.add_parser("metrics-inprocess", help="Model.infer per call with histograms on vs off, in one process")
    i.add_argument("--blocks", type=int, default=20, help="alternating blocks per arm (default 20)")
    i.add_argument("--calls", type=int, default=2000, help="calls per block (default 2000)")
    i.add_argument("--out", type=Path, required=True, help="directory for metrics-inprocess.json")
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
    elif args.what == "metrics-inprocess":
        result = run_metrics_inprocess(args.blocks, args.calls)
    else:
        result = run_poll_delay([float(x) for x in args.periods.split(",")], args.changes)
    result["command"] = "python -m tensorwire.bench.operations " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / f"{args.what}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
