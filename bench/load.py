"""`tensorwire bench load`: a load generator for any KServe v2 gRPC endpoint (ours, Triton, MLServer, ...).

It speaks only the public protocol: ModelMetadata to learn the inputs, ModelInfer with raw inputs to
load the server. The request is encoded once and sent as raw bytes, so the generator spends its CPU on
sending, not on protobuf. Workers are separate processes (spawned, each with its own channels) so the
client's GIL is not what limits the figures; the parent only hands out work and merges latencies.

Closed loop: ``concurrency`` callers, each sending its next request when the previous one returns.
Open loop: requests leave on a fixed schedule (``rate`` per second, whatever the server does) and each
latency is measured from the request's *intended* send time, so a stalled server or a late client shows
up in the figures instead of silently lowering the load (no coordinated omission).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorwire.bench import arguments, machine, procstat
from tensorwire.bench.progress import progress_bar
from tensorwire.bench.stats import cdf_points, percentile_ms, summarize_tail
from tensorwire.client import TLS, open_channel
from tensorwire.server.affinity import usable_cpus

SERVICE = "/inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
START_MARGIN_S = 0.3


@dataclass
class LoadSettings:
    target: str
    model: str
    out: Path | None = None
    version: str = ""
    concurrency: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    duration_s: float = 10.0
    max_requests: int | None = None          # per level, all workers together
    warmup_s: float = 1.0
    processes: int = 0                       # 0: the usable cores
    timeout_s: float = 30.0
    shapes: dict[str, list[int]] = field(default_factory=dict)   # --shape: fills -1 dims
    inputs: list[str] = field(default_factory=list)              # --input NAME:SHAPE:DTYPE (skips metadata)
    data: Path | None = None
    int_range: tuple[int, int] = (0, 1)
    seed: int = 0
    quick: bool = False
    progress: bool = True
    tls: TLS | None = None                   # --ssl-grpc-* (perf_analyzer's flag names)
    headers: dict[str, str] = field(default_factory=dict)       # -H KEY:VALUE, e.g. restricted-protocol keys
    streaming: bool = False                  # --streaming: ModelStreamInfer, one request in flight per stream
    server_pids: list[int] | None = None     # --server-pid; None: whoever listens on a loopback target's port
    echo: bool = False                       # --echo: the same levels against a bare grpcio echo, alternating
    protocol: str = "grpc"                   # --protocol: grpc, or http (KServe v2 REST, binary tensor data)
    http_headers: dict[str, str] = field(default_factory=dict)  # set by run_load_http: the binary extension's


def quick_settings(s: LoadSettings) -> LoadSettings:
    s.quick, s.duration_s, s.warmup_s = True, min(s.duration_s, 1.0), min(s.warmup_s, 0.2)
    return s


# ---------------------------------------------------------------- what to send

def _channel(target: str, tag: int = 0, tls: TLS | None = None, headers: dict | None = None) -> grpc.Channel:
    """A channel of its own (no shared subchannel), so each caller has its own connection."""
    return open_channel(target, tls=tls, headers=headers, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.use_local_subchannel_pool", 1),
        ("tensorwire.bench.channel", tag),
    ])


def fetch_inputs(target: str, model: str, version: str = "", timeout_s: float = 30.0, tls: TLS | None = None,
                 headers: dict | None = None) -> list[dict[str, Any]]:
    """``[{name, datatype, shape}]`` from ModelMetadata (-1 for variable dims), the protocol's own answer."""
    from tensorwire import proto as pb

    with _channel(target, tls=tls, headers=headers) as ch:
        call = ch.unary_unary(f"{SERVICE}/ModelMetadata", request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=pb.ModelMetadataResponse.FromString)
        try:
            meta = call(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout_s,
                        wait_for_ready=True)
        except grpc.RpcError as exc:
            raise RuntimeError(f"ModelMetadata for {model!r} at {target} failed: {exc.code().name}: {exc.details()} "
                               "(describe the inputs with --input NAME:SHAPE:DATATYPE if the server has no "
                               "ModelMetadata)") from None
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]


def parse_input_spec(text: str) -> dict[str, Any]:
    """``NAME:1x512:FP32`` -> an input description, for servers without ModelMetadata."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"--input {text!r}: expected NAME:SHAPE:DATATYPE, e.g. input:1x512:FP32")
    return {"name": parts[0], "shape": parse_shape(parts[1]), "datatype": parts[2].upper()}


def parse_shape(text: str) -> list[int]:
    return [int(d) for d in text.lower().split("x")] if text else []


def resolve_shape(meta_shape: list[int], override: list[int] | None, name: str) -> list[int]:
    """A metadata shape with -1 dims filled: from ``--shape NAME:...`` if given, else 1."""
    if override is not None:
        if len(override) != len(meta_shape) or any(m not in (-1, o) for m, o in zip(meta_shape, override)):
            raise ValueError(f"--shape {name}:{'x'.join(map(str, override))} does not fit the server's shape "
                             f"{meta_shape} (-1 is variable)")
        return list(override)
    return [1 if d < 0 else d for d in meta_shape]


def make_inputs(specs: list[dict[str, Any]], shapes: dict[str, list[int]], data: Path | None = None,
                int_range: tuple[int, int] = (0, 1), seed: int = 0) -> tuple[dict[str, tuple[str, np.ndarray]], str]:
    """``{name: (datatype, array)}``: real data from an .npz, else random values of the right datatype.

    Integers default to 0..1, which is valid for token ids, attention masks and type ids alike.
    """
    from tensorwire.proto.datatypes import DATATYPES

    rng = np.random.default_rng(seed)
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    npz = np.load(data) if data else None
    unknown = sorted(set(shapes) - {s["name"] for s in specs})
    if unknown:
        raise ValueError(f"--shape names {unknown}, which the model does not have; inputs: "
                         f"{[s['name'] for s in specs]}")
    for spec in specs:
        name, dt_name = spec["name"], spec["datatype"]
        if dt_name not in DATATYPES:
            raise ValueError(f"input {name!r} has datatype {dt_name!r}, not a KServe v2 datatype")
        if npz is not None:
            if name not in npz.files:
                raise ValueError(f"--data {data} has no array {name!r} (it has {npz.files})")
            arrays[name] = (dt_name, np.ascontiguousarray(npz[name]))
            continue
        shape = resolve_shape(spec["shape"], shapes.get(name), name)
        np_dtype = DATATYPES[dt_name].numpy
        if dt_name == "BYTES":
            arr = np.array([b"tensorwire"] * math.prod(shape), dtype=object).reshape(shape)
        elif dt_name == "BF16":
            arr = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        elif dt_name == "BOOL":
            arr = rng.integers(0, 2, shape).astype(bool)
        elif np_dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(np_dtype)
        else:
            arr = rng.integers(int_range[0], int_range[1] + 1, shape).astype(np_dtype)
        arrays[name] = (dt_name, arr)
    return arrays, (f"{data}" if data else f"random (floats N(0,1), integers {int_range[0]}..{int_range[1]})")


def encode(model: str, arrays: dict[str, tuple[str, np.ndarray]], version: str = "") -> bytes:
    """Request bytes, once: tensorwire's encoder, or raw bytes by hand for BF16 (numpy has no bf16)."""
    from tensorwire.client import encode_request

    if all(dt != "BF16" for dt, _ in arrays.values()):
        return encode_request(model, {n: a for n, (_, a) in arrays.items()}, version=version)
    from tensorwire import proto as pb

    req = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, (dt, arr) in arrays.items():
        req.inputs.add(name=name, datatype=dt, shape=arr.shape)
        req.raw_input_contents.append(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return req.SerializeToString()


# ---------------------------------------------------------------- workers (child processes)

@dataclass
class WorkerJob:
    target: str
    request: bytes
    mode: str                  # closed | open
    callers: int               # closed loop: concurrent callers in this worker
    rate: float                # open loop: requests/s from this worker
    phase_s: float             # open loop: offset of this worker's schedule
    duration_s: float
    max_requests: int | None
    warmup_s: float
    timeout_s: float
    index: int
    tls: TLS | None = None
    headers: dict | None = None
    streaming: bool = False
    protocol: str = "grpc"
    model: str = ""
    version: str = ""
    http_headers: dict | None = None  # with protocol http: the request's headers (the binary extension's)


class StreamError(grpc.RpcError):
    """A stream answer that carries ``error_message``: counted like a status code, by this name."""

    class _Code:
        name = "STREAM_ERROR_MESSAGE"

    def code(self):
        return self._Code


class StreamCaller:
    """One ModelStreamInfer call used like a unary stub: send one request, wait for its answer.

    One request in flight per stream, so a closed loop over N of these is N streams at concurrency N (what
    perf_analyzer --streaming does). A stream that fails is reopened on the next request.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._method = channel.stream_stream(f"{SERVICE}/ModelStreamInfer")
        self._queue: queue.SimpleQueue | None = None
        self._answers = None

    def _open(self) -> None:
        self._queue = queue.SimpleQueue()
        self._answers = self._method(iter(self._queue.get, None))

    def __call__(self, request: bytes, timeout: float | None = None) -> bytes:
        if self._answers is None:
            self._open()
        self._queue.put(request)
        try:
            answer = next(self._answers)
        except grpc.RpcError:
            self.close()
            raise
        if answer[:1] == b"\x0a" and answer[1:2] != b"\x00":  # field 1, error_message, non-empty
            raise StreamError()
        return answer

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
        self._queue, self._answers = None, None


def _warmup(call, request: bytes, seconds: float, timeout_s: float) -> None:
    end = time.perf_counter() + seconds
    while True:
        with contextlib.suppress(grpc.RpcError):
            call(request, timeout=timeout_s)
        if time.perf_counter() >= end:
            return


def _closed(job: WorkerJob, calls: list, start: float) -> dict[str, Any]:
    end = start + job.duration_s
    lock = threading.Lock()
    budget = [job.max_requests if job.max_requests is not None else math.inf]
    lat: list[list[float]] = [[] for _ in calls]
    errors: list[Counter] = [Counter() for _ in calls]
    last = [start]

    def take() -> bool:
        with lock:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

    def caller(i: int) -> None:
        call, mine, errs = calls[i], lat[i], errors[i]
        while time.perf_counter() < end and take():
            t0 = time.perf_counter()
            try:
                call(job.request, timeout=job.timeout_s)
                mine.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                errs[exc.code().name] += 1
        last.append(time.perf_counter())

    _sleep_until(start)
    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = Counter()
    for e in errors:
        merged.update(e)
    latencies = [x for part in lat for x in part]
    return {"latencies": latencies, "errors": dict(merged), "sent": len(latencies) + sum(merged.values()),
            "start": start, "end": max(last)}


def _open(job: WorkerJob, calls: list, start: float) -> dict[str, Any]:
    """Send on schedule with futures; each latency counts from the intended send time."""
    interval = 1.0 / job.rate
    first = start + job.phase_s
    end = start + job.duration_s
    cap = job.max_requests if job.max_requests is not None else math.inf
    lat: list[float] = []
    service: list[float] = []
    lags: list[float] = []
    errors: Counter = Counter()
    done_at = [start]
    finished = threading.Condition()
    completed = [0]

    def on_done(fut, intended: float, sent: float) -> None:
        now = time.perf_counter()
        with finished:
            completed[0] += 1
            finished.notify_all()
            done_at.append(now)
            exc = fut.exception()
            if exc is None:
                lat.append(now - intended)
                service.append(now - sent)
            else:
                errors[exc.code().name if hasattr(exc, "code") else type(exc).__name__] += 1

    k = 0
    last_send = start
    while k < cap:
        intended = first + k * interval
        if intended >= end:
            break
        _sleep_until(intended)
        sent = time.perf_counter()
        lags.append(sent - intended)
        fut = calls[k % len(calls)].future(job.request, timeout=job.timeout_s)
        fut.add_done_callback(lambda f, i=intended, s=sent: on_done(f, i, s))
        last_send = sent
        k += 1
    # Wait for every done-callback, not for the futures: result() can return before a callback has run.
    with finished:
        finished.wait_for(lambda: completed[0] >= k, timeout=job.timeout_s + 5)
        return {"latencies": list(lat), "service": list(service), "lags": lags, "errors": dict(errors),
                "sent": k, "start": start, "end": max(done_at),
                "last_send": last_send}


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left if left < 0.002 else left - 0.001)


def _worker(job: WorkerJob, results, ready, go, start_at) -> None:
    """Child process: open channels, warm up, report ready, wait for the common start, run, report."""
    try:
        n_channels = job.callers if job.mode == "closed" else 2
        if job.protocol == "http":
            from tensorwire.bench.http_load import HttpCaller

            channels = []
            calls = [HttpCaller(job.target, job.model, job.version, {**(job.headers or {}), **job.http_headers})
                     for _ in range(n_channels)]
        else:
            channels = [_channel(job.target, job.index * 1000 + i, job.tls, job.headers) for i in range(n_channels)]
            calls = ([StreamCaller(ch) for ch in channels] if job.streaming
                     else [ch.unary_unary(f"{SERVICE}/ModelInfer") for ch in channels])
        for call in calls:
            _warmup(call, job.request, job.warmup_s / max(1, len(calls)), job.timeout_s)
        ready.put(job.index)
        go.wait()
        run = _closed if job.mode == "closed" else _open
        results.put((job.index, run(job, calls, start_at.value)))
        for call in calls:
            if hasattr(call, "close"):
                call.close()
        for ch in channels:
            ch.close()
    except BaseException as exc:  # the parent reports it; a worker must never hang the run
        ready.put(job.index)
        results.put((job.index, {"fatal": f"{type(exc).__name__}: {exc}"}))


# ---------------------------------------------------------------- parent

def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive shares."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_level(s: LoadSettings, request: bytes, mode: str, concurrency: int = 0, rate: float = 0.0,
              pids: list[int] | None = None) -> dict[str, Any]:
    """One closed-loop concurrency or one open-loop rate, across worker processes; merged figures.

    With ``pids`` (the server's processes), their user + system CPU time from the common start to the last
    worker's report, per successful request, is the level's ``server_cpu``: warm-up is outside that window.
    """
    max_procs = s.processes or usable_cpus()
    procs = max(1, min(max_procs, concurrency)) if mode == "closed" else max(1, min(max_procs, math.ceil(rate / 50)))
    callers = split(concurrency, procs) if mode == "closed" else [0] * procs
    caps = split(s.max_requests, procs) if s.max_requests else [None] * procs
    ctx = mp.get_context("spawn")
    results, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    jobs = [WorkerJob(s.target, request, mode, callers[i], rate / procs if mode == "open" else 0.0,
                      i / rate if mode == "open" else 0.0, s.duration_s, caps[i], s.warmup_s, s.timeout_s, i,
                      s.tls, s.headers, s.streaming, s.protocol, s.model, s.version, s.http_headers)
            for i in range(procs)]
    workers = [ctx.Process(target=_worker, args=(j, results, ready, go, start_at), daemon=True) for j in jobs]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=120 + s.warmup_s)
        cpu_before = procstat.cpu_times(pids) if pids else None
        start_at.value = time.perf_counter() + START_MARGIN_S   # CLOCK_MONOTONIC: the same clock in every process
        go.set()
        parts = {}
        deadline = time.monotonic() + START_MARGIN_S + s.duration_s + s.timeout_s + 60
        while len(parts) < len(workers):
            idx, part = results.get(timeout=max(1.0, deadline - time.monotonic()))
            parts[idx] = part
        cpu_after = procstat.cpu_times(pids) if pids else None
    except queue.Empty:
        raise RuntimeError(f"load workers did not report within the time limit ({mode}, c={concurrency}, "
                           f"rate={rate})") from None
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join()
    fatal = [p["fatal"] for p in parts.values() if "fatal" in p]
    if fatal:
        raise RuntimeError(f"load worker failed: {fatal[0]}")
    level = merge(list(parts.values()), mode, concurrency, rate, procs)
    level["transport"] = "HTTP infer" if s.protocol == "http" else "ModelStreamInfer" if s.streaming else "ModelInfer"
    level["server_cpu"] = procstat.cpu_per_request(cpu_before, cpu_after, level["ok"], pids) if pids else None
    level["cpu_us_per_request"] = level["server_cpu"]["us_per_request"] if pids else None
    return level


def merge(parts: list[dict[str, Any]], mode: str, concurrency: int, rate: float, procs: int) -> dict[str, Any]:
    """The figures of one level from its workers' raw latencies."""
    latencies = [x for p in parts for x in p["latencies"]]
    errors = Counter()
    for p in parts:
        errors.update(p["errors"])
    start = min(p["start"] for p in parts)
    window = max(p["end"] for p in parts) - start
    ok = len(latencies)
    level: dict[str, Any] = {
        "mode": mode,
        "concurrency": concurrency if mode == "closed" else None,
        "rate_target": rate if mode == "open" else None,
        "processes": procs,
        "sent": sum(p["sent"] for p in parts),
        "ok": ok,
        "errors": dict(sorted(errors.items())),
        "window_s": window,
        "throughput_rps": ok / window if window > 0 else float("nan"),
        "latency": summarize_tail(latencies),
        "latency_from": "actual send time" if mode == "closed" else "intended send time",
        "cdf": cdf_points(latencies),
    }
    if mode == "open":
        lags = [x for p in parts for x in p["lags"]]
        level["service_latency"] = summarize_tail([x for p in parts for x in p["service"]])
        last_send = max(p["last_send"] for p in parts)
        level["send_rate"] = level["sent"] / (last_send - start + 1.0 / rate) if level["sent"] else 0.0
        level["send_lag_p99_ms"] = percentile_ms(lags, 99)
        level["send_lag_max_ms"] = max(lags) * 1e3 if lags else float("nan")
    return level


def run_load(s: LoadSettings) -> dict[str, Any]:
    """Every level of ``s``: a sanity request first, then closed-loop levels, then open-loop rates."""
    from tensorwire.bench import report

    if s.protocol == "http":
        return run_load_http(s)
    if s.inputs:
        specs = [parse_input_spec(t) for t in s.inputs]
        source = "--input"
    else:
        specs = fetch_inputs(s.target, s.model, s.version, max(s.timeout_s, 30.0), s.tls, s.headers)
        source = "ModelMetadata"
    arrays, data_source = make_inputs(specs, s.shapes, s.data, s.int_range, s.seed)
    request = encode(s.model, arrays, s.version)
    with _channel(s.target, tls=s.tls, headers=s.headers) as ch:
        try:
            response = ch.unary_unary(f"{SERVICE}/ModelInfer")(request, timeout=max(s.timeout_s, 30.0),
                                                                wait_for_ready=True)
        except grpc.RpcError as exc:
            raise RuntimeError(f"the first request to {s.model} at {s.target} failed: {exc.code().name}: "
                               f"{exc.details()}") from None
    if s.streaming:
        if s.rates:
            raise ValueError("--streaming is closed loop only (one request in flight per stream); drop --rate")
        response = _first_stream_answer(s, request)
    concurrency = s.concurrency or ([] if s.rates else [1, 8, 32])
    plan = [("closed", c, 0.0) for c in concurrency] + [("open", 0, r) for r in s.rates]
    pids = s.server_pids if s.server_pids is not None else procstat.local_server_pids(s.target)
    payload: dict[str, Any] = {
        "kind": "load",
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "settings": {**{k: v for k, v in asdict(s).items() if k not in ("out", "data", "headers")},
                     "headers": sorted(s.headers),  # names only: their values are often secrets
                     "out": str(s.out) if s.out else None, "data": str(s.data) if s.data else None,
                     "processes": s.processes or usable_cpus(), "concurrency": concurrency},
        "inputs": [{"name": n, "datatype": dt, "shape": list(a.shape)} for n, (dt, a) in arrays.items()],
        "inputs_from": source,
        "data_source": data_source,
        "request_bytes": len(request),
        "response_bytes": len(response),
        "transport": "ModelStreamInfer" if s.streaming else "ModelInfer",
        "server_pids": pids,
        "levels": [],
    }
    with contextlib.ExitStack() as stack:
        echo = _start_echo(s, len(response), concurrency, stack) if s.echo else None
        _run_plan(s, request, plan, pids, echo, payload)
    if s.out:
        report.write_load(payload, s.out)
    return payload


def run_load_http(s: LoadSettings) -> dict[str, Any]:
    """``run_load`` over KServe v2 REST: metadata from GET /v2/models/{m}, requests in binary tensor data."""
    from tensorwire.bench import http_load, report

    if s.streaming or s.echo or s.tls:
        raise ValueError("--protocol http takes no --streaming, --echo or --ssl-grpc-* flags")
    specs = ([parse_input_spec(t) for t in s.inputs] if s.inputs
             else http_load.fetch_inputs(s.target, s.model, s.version, max(s.timeout_s, 30.0), s.headers))
    arrays, data_source = make_inputs(specs, s.shapes, s.data, s.int_range, s.seed)
    request, s.http_headers = http_load.encode(arrays)
    first = http_load.HttpCaller(s.target, s.model, s.version, {**s.headers, **s.http_headers})
    try:
        response = first(request, timeout=max(s.timeout_s, 30.0))
    except http_load.HttpError as exc:
        raise RuntimeError(f"the first request to {s.model} at {s.target} failed: {exc}") from None
    concurrency = s.concurrency or ([] if s.rates else [1, 8, 32])
    plan = [("closed", c, 0.0) for c in concurrency] + [("open", 0, r) for r in s.rates]
    pids = s.server_pids if s.server_pids is not None else procstat.local_server_pids(s.target)
    payload: dict[str, Any] = {
        "kind": "load", "schema": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine.describe(),
        "settings": {**{k: v for k, v in asdict(s).items() if k not in ("out", "data", "headers", "http_headers")},
                     "headers": sorted(s.headers), "out": str(s.out) if s.out else None,
                     "data": str(s.data) if s.data else None, "processes": s.processes or usable_cpus(),
                     "concurrency": concurrency},
        "inputs": [{"name": n, "datatype": dt, "shape": list(a.shape)} for n, (dt, a) in arrays.items()],
        "inputs_from": "--input" if s.inputs else "GET /v2/models", "data_source": data_source,
        "request_bytes": len(request), "response_bytes": len(response),
        "transport": "HTTP/REST binary tensor data", "server_pids": pids, "levels": [],
    }
    _run_plan(s, request, plan, pids, None, payload)
    if s.out:
        report.write_load(payload, s.out)
    return payload


def _first_stream_answer(s: LoadSettings, request: bytes) -> bytes:
    """One request over ModelStreamInfer before the run: the server must answer it without an error."""
    with _channel(s.target, tls=s.tls, headers=s.headers) as ch:
        stream = StreamCaller(ch)
        try:
            return stream(request)
        except StreamError:
            raise RuntimeError(f"the first streamed request to {s.model} at {s.target} was answered with an "
                               "error_message") from None
        except grpc.RpcError as exc:
            raise RuntimeError(f"ModelStreamInfer to {s.model} at {s.target} failed: {exc.code().name}: "
                               f"{exc.details()}") from None
        finally:
            stream.close()


def _start_echo(s: LoadSettings, response_bytes: int, concurrency: list[int], stack: contextlib.ExitStack):
    """The bare grpcio echo (tensorwire.echo) answering with as many bytes, and its pids; a handler thread
    per stream (a sync grpcio stream holds one for its life), at least its default 8."""
    from tensorwire.launcher import echo_server

    threads = max([8, *concurrency])
    server = stack.enter_context(echo_server(response_bytes, "--threads", str(threads)))
    return server.address, [server.process.pid]


def _run_plan(s: LoadSettings, request: bytes, plan: list, pids: list[int], echo, payload: dict) -> None:
    """Each level against the target, then (with ``echo``) the same level against the echo at once, so
    the two see the same machine; the echo's figures and the CPU ratio go into the level."""
    bar = progress_bar(len(plan), s.progress, unit="level")
    try:
        for mode, c, r in plan:
            bar.set_description(f"closed c={c}" if mode == "closed" else f"open {r:g}/s")
            level = run_level(s, request, mode, c, r, pids)
            if echo is not None:
                address, echo_pids = echo
                other = run_level(replace(s, target=address, headers={}, tls=None), request, mode, c,
                                  r, echo_pids)
                level["echo"] = {k: other[k] for k in ("ok", "errors", "throughput_rps", "latency", "server_cpu",
                                                       "cpu_us_per_request")}
                level["cpu_ratio_vs_echo"] = _ratio(level["server_cpu"], other["server_cpu"])
            payload["levels"].append(level)
            bar.update(1)
    finally:
        bar.close()


def _ratio(ours: dict | None, echo: dict | None) -> float | None:
    if not ours or not echo or not echo["us_per_request"]:
        return None
    return ours["us_per_request"] / echo["us_per_request"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench load``."""
    p.add_argument("--target", required=True, help="HOST:PORT of the gRPC (or, with --protocol http, HTTP) endpoint")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                   help="grpc (ModelInfer), or http: KServe v2 REST with binary tensor data (default grpc)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("--concurrency", type=arguments.int_list, default=None,
                   help="closed-loop concurrencies, comma-separated (default 1,8,32 unless only --rate is given)")
    p.add_argument("--rate", type=arguments.float_list, default=[],
                   help="open-loop request rates per second, comma-separated (default: none, closed loop only)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    p.add_argument("--requests", type=int, default=None, help="at most this many requests per level (default: "
                   "no limit, --duration decides)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per level, not measured (default 1)")
    p.add_argument("--processes", type=int, default=0, help="worker processes at most (default 0: usable cores)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds (default 30)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224",
                   help="shape of an input whose metadata has -1 dims (repeatable; default 1 for each -1)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DATATYPE",
                   help="describe the inputs yourself instead of asking ModelMetadata (repeatable; default: ask)")
    p.add_argument("--data", type=Path, default=None,
                   help=".npz with one array per input name (default: random data)")
    p.add_argument("--int-range", type=arguments.int_range, default=(0, 1), help="random integer inputs in LOW..HIGH "
                   "(default 0..1: valid ids, masks and type ids)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for load.json, load.md and PNG plots (default: print the table only)")
    p.add_argument("--quick", action="store_true", help="1 s per level, short warm-up (CI)")
    p.add_argument("--ssl-grpc-use-ssl", action="store_true", help="TLS to the target (perf_analyzer's flag names)")
    p.add_argument("--ssl-grpc-root-certifications-file", type=Path, default=None, metavar="FILE",
                   help="PEM roots the server's certificate must chain to (default: the system's)")
    p.add_argument("--ssl-grpc-private-key-file", type=Path, default=None, metavar="FILE",
                   help="PEM private key of the client, for mutual TLS (default: none)")
    p.add_argument("--ssl-grpc-certificate-chain-file", type=Path, default=None, metavar="FILE",
                   help="PEM certificate chain of the client, for mutual TLS (default: none)")
    p.add_argument("--streaming", action="store_true",
                   help="send over ModelStreamInfer, one stream per caller with one request in flight (as "
                   "perf_analyzer --streaming); closed loop only (default: unary ModelInfer)")
    p.add_argument("--server-pid", type=int, action="append", default=None, metavar="PID",
                   help="server process whose user + system CPU per request to report, repeatable (default: the "
                   "processes listening on a loopback target's port, and their children)")
    p.add_argument("--no-server-cpu", action="store_true", help="do not look for the server's processes")
    p.add_argument("--echo", action="store_true",
                   help="run each level against a bare grpcio echo too (same transport, same response size), "
                   "right after the target's, and report its throughput, latency and CPU per request beside them")
    p.add_argument("-H", "--header", action="append", default=[], metavar="KEY:VALUE",
                   help="gRPC metadata sent with every request, repeatable, e.g. "
                   "triton-grpc-protocol-infer-key:SECRET (default: none)")


def _tls(args: argparse.Namespace) -> TLS | None:
    files = (args.ssl_grpc_root_certifications_file, args.ssl_grpc_private_key_file,
             args.ssl_grpc_certificate_chain_file)
    if not args.ssl_grpc_use_ssl:
        if any(files):
            raise ValueError("--ssl-grpc-* files need --ssl-grpc-use-ssl")
        return None
    return TLS(*files)


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"-H {item!r}: expected KEY:VALUE")
        headers[key.strip().lower()] = value.strip()
    return headers


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench load``: 0 when no request failed, 1 if some did, 2 when the test could not start."""
    from tensorwire.bench.report import load_markdown

    try:
        s = LoadSettings(target=args.target, model=args.model, out=args.out, version=args.model_version,
                         concurrency=args.concurrency or [], rates=args.rate, duration_s=args.duration,
                         max_requests=args.requests, warmup_s=args.warmup, processes=args.processes,
                         timeout_s=args.timeout, shapes=arguments.shapes(args.shape), inputs=args.inputs,
                         data=args.data, int_range=args.int_range, tls=_tls(args),
                         headers=_headers(args.header), streaming=args.streaming, echo=args.echo,
                         protocol=args.protocol,
                         server_pids=[] if args.no_server_cpu else args.server_pid)
        if args.quick:
            quick_settings(s)
        payload = run_load(s)
    except (ValueError, RuntimeError) as exc:
        print(f"tensorwire bench load: {exc}", file=sys.stderr)
        return 2
    print(load_markdown(payload))
    if args.out:
        print(f"written: {args.out}/load.json, load.md, load_throughput_p99.png, load_latency_cdf.png")
    return 0 if all(not lv["errors"] for lv in payload["levels"]) else 1
