"""`tensorwire bench memory`: what one hostile request costs the server in memory, against bare grpcio.

Each case is a request of tens of MiB (the amplification cases of docs/resilience.md and a few accepted ones) sent
once to a fresh `tensorwire serve` (fresh, so that memory a previous case left in the allocator does not
hide this one's cost). The server's peak is its VmHWM, reset through /proc/PID/clear_refs just before
the request, minus its VmRSS then. The floor is the same bytes sent to the bare grpcio echo server
(``tensorwire.echo``: receives bytes, answers a payload of the size ours answered), measured the same way.
With ``--p99`` another client sends small requests throughout and its p99 is compared with its p99 on the
idle server. Results and the command: bench/results/memory/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from tensorwire.bench.procstat import status_field
from tensorwire.launcher import ServerProcess, echo_server, tensorwire_server

INFER = "/inference.GRPCInferenceService/ModelInfer"
MiB = 2**20
SMALL_MODEL = "identity_fp32"


# -- requests written by hand: a 60 MB typed request through protobuf would cost the client seconds ------

def varint(n: int) -> bytes:
    """``n`` as a protobuf varint (negative ints as their 64-bit two's complement, as protobuf writes them)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field_number: int, payload: bytes) -> bytes:
    return varint((field_number << 3) | 2) + varint(len(payload)) + payload


def input_tensor(name: str, datatype: str, shape: tuple[int, ...], contents: bytes = b"") -> bytes:
    """InferInputTensor wire bytes; ``contents``: an InferTensorContents body (empty: none)."""
    body = _ld(1, name.encode()) + _ld(2, datatype.encode()) + _ld(3, b"".join(varint(d) for d in shape))
    return body + (_ld(5, contents) if contents else b"")


def infer_request(model: str, inputs: list[bytes], raw: list[bytes] = ()) -> bytes:
    """ModelInferRequest wire bytes."""
    return _ld(1, model.encode()) + b"".join(_ld(5, t) for t in inputs) + b"".join(_ld(7, r) for r in raw)


def small_request() -> bytes:
    return infer_request(SMALL_MODEL, [input_tensor("INPUT", "FP32", (1, 16))], [bytes(64)])


SMALL_ANSWER_BYTES = 128  # about what tensorwire answers to small_request; the echo server answers as many

@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[], bytes]
    expect: str  # the status name the server must answer
    model: str = ""  # a model to warm up first (its first run allocates ORT's arenas)
    server_args: tuple[str, ...] = ()
    # What ONNX Runtime's run produces (the model's own memory: an Identity copies its input); counted in
    # the bound, with the encoded answer when there is one, because no server can answer without them.
    model_output_bytes: int = 0


def _raw_bytes(n: int) -> bytes:
    return infer_request("identity_bytes", [input_tensor("INPUT", "BYTES", (1, n))], [b"\x01\x00\x00\x00x" * n])


def _typed(model: str, datatype: str, field_number: int, n: int) -> bytes:
    # bytes_contents: one length-delimited field per element; the others: a packed run of one-byte varints
    contents = b"\x42\x04abcd" * n if field_number == 8 else _ld(field_number, b"\x01" * n)
    return infer_request(model, [input_tensor("INPUT", datatype, (1, n), contents)])


CASES = [
    Case("raw_bytes_1e7", "raw BYTES, 10^7 one-byte elements", lambda: _raw_bytes(10**7),
         "RESOURCE_EXHAUSTED", "identity_bytes"),
    Case("typed_bytes_1e7", "bytes_contents, 10^7 four-byte elements", lambda: _typed("identity_bytes", "BYTES", 8,
         10**7), "RESOURCE_EXHAUSTED", "identity_bytes"),
    Case("unknown_model_int64_6e7", "unknown model, 6x10^7 int64_contents",
         lambda: _typed("no_such_model", "INT64", 3, 6 * 10**7), "NOT_FOUND"),
    Case("typed_int64_6e7", "int64_contents, 6x10^7 one-byte varints (480 MB decoded)",
         lambda: _typed("identity_int64", "INT64", 3, 6 * 10**7), "RESOURCE_EXHAUSTED", "identity_int64"),
    Case("raw_bytes_at_bound", "raw BYTES, 2^16 one-byte elements (the default bound), answered",
         lambda: _raw_bytes(1 << 16), "OK", "identity_bytes"),
    Case("typed_bytes_at_bound", "bytes_contents, 2^16 four-byte elements (the default bound), answered",
         lambda: _typed("identity_bytes", "BYTES", 8, 1 << 16), "OK", "identity_bytes"),
    Case("raw_fp32_40mb", "raw FP32, 10^7 elements (40 MB), answered", lambda: infer_request(
         "identity_fp32", [input_tensor("INPUT", "FP32", (1, 10**7))], [bytes(4 * 10**7)]), "OK", "identity_fp32",
         model_output_bytes=4 * 10**7),
    Case("response_over_limit", "int64_contents, 2x10^6 one-byte varints: a 16 MB answer over --max-message-mb 8",
         lambda: _typed("identity_int64", "INT64", 3, 2 * 10**6), "RESOURCE_EXHAUSTED", "identity_int64",
         ("--max-message-mb", "8"), model_output_bytes=16 * 10**6),
]


def write_repository(repo: Path) -> Path:
    """Identity models (FP32, INT64, BYTES), dims [-1, -1], max_batch_size 8: the model holds nothing."""
    from onnx import TensorProto

    from tensorwire.bench import models

    return models.write_repository(repo, {
        name: (models.identity_model(name, elem), "max_batch_size: 8\n")
        for name, elem in (("identity_fp32", TensorProto.FLOAT), ("identity_int64", TensorProto.INT64),
                           ("identity_bytes", TensorProto.STRING))})


# -- measuring -----------------------------------------------------------------------------------------

@dataclass
class Sent:
    status: str
    message: str
    response_bytes: int
    peak_mib: float  # VmHWM during the call minus VmRSS before it


def send_measured(server: ServerProcess, request: bytes, timeout_s: float = 300.0) -> Sent:
    """Send ``request`` once and measure the server's peak memory above where it stood."""
    pid = server.process.pid
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1),
                                                        ("grpc.max_receive_message_length", -1)]) as channel:
        call = channel.unary_unary(INFER)
        time.sleep(0.2)
        base = status_field(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        try:
            answer = call(request, timeout=timeout_s)
            status, message, size = "OK", "", len(answer)
        except grpc.RpcError as exc:
            status, message, size = exc.code().name, exc.details() or "", 0
        peak = status_field(pid, "VmHWM")
    return Sent(status, message, size, round((peak - base) / 1024, 1))


def warm(server: ServerProcess, model: str) -> None:
    """One small request per model: ORT's first run and grpcio's first large receive are not the case's."""
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(INFER)
        call(small_request(), timeout=60)
        if model == "identity_bytes":
            call(_raw_bytes(4), timeout=60)
        elif model == "identity_int64":
            call(_typed(model, "INT64", 3, 4), timeout=60)


@dataclass
class Result:
    case: str
    what: str
    wire_mib: float
    status: str
    message: str
    server_peak_mib: float
    grpcio_peak_mib: float  # the bare echo server, same request, same answer size
    bound_mib: float  # see bound_for
    small_p99_ms: dict = field(default_factory=dict)


ALLOWANCE_MIB = 32.0
UNKNOWN_MODEL_EXTRA_MIB = 64.0


def bound_for(case: Case, wire_mib: float, grpcio_peak: float, response_bytes: int = 0) -> float:
    """The issue's target: grpcio's own receive of the same bytes + 1x wire + a small allowance, plus what the
    model itself produced and the answer encoded from it (an unknown model: grpcio's receive + 64 MiB)."""
    if case.expect == "NOT_FOUND":
        return round(grpcio_peak + UNKNOWN_MODEL_EXTRA_MIB, 1)
    return round(grpcio_peak + wire_mib + ALLOWANCE_MIB + (case.model_output_bytes + response_bytes) / MiB, 1)


def grpcio_floor(request: bytes, response_bytes: int) -> float:
    with echo_server(response_bytes) as echo:
        return send_measured(echo, request).peak_mib


def _latencies(address: str, stop: threading.Event, out: list[float], limit: int) -> None:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER)
        req = small_request()
        while not stop.is_set() and len(out) < limit:
            t0 = time.perf_counter()
            call(req, timeout=60)
            out.append((time.perf_counter() - t0) * 1e3)


LOAD_SECONDS = 3.0  # the loading client sends for at least this long (and at least ``repeats`` times)


def small_p99(server: ServerProcess, request: bytes, repeats: int, samples: int) -> dict:
    """p99 of a small request on the idle server, then while another process sends ``request`` (another
    process: a sender in this one would hold this client's GIL while it serialises). Loaded samples are
    taken only while it sends: it says when it is ready (imports done, connected), sends on "go", and the
    window closes when it exits."""
    idle: list[float] = []
    _latencies(server.address, threading.Event(), idle, samples)
    loaded: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=_latencies, args=(server.address, stop, loaded, 10**9))
    with tempfile.NamedTemporaryFile(prefix="tensorwire-memory-", suffix=".bin") as f:
        f.write(request)
        f.flush()
        sender = subprocess.Popen([sys.executable, "-m", "tensorwire.bench.memory", "--send", server.address,
                                   f.name, str(repeats)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert sender.stdout.readline().strip() == "ready"
        t.start()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        sender.wait(timeout=900)
    stop.set()
    t.join()
    return {"idle_ms": round(float(np.percentile(idle, 99)), 2),
            "loaded_ms": round(float(np.percentile(loaded, 99)), 2), "loaded_samples": len(loaded)}


def _send(address: str, path: str, repeats: int) -> int:
    """The loading client: send the request in ``path`` at least ``repeats`` times and for LOAD_SECONDS."""
    request = Path(path).read_bytes()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                 ("grpc.max_receive_message_length", -1)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        call = channel.unary_unary(INFER)
        print("ready", flush=True)
        sys.stdin.readline()
        start, sent = time.monotonic(), 0
        while sent < repeats or time.monotonic() - start < LOAD_SECONDS:
            with contextlib.suppress(grpc.RpcError):  # refused or answered: the load is the point
                call(request, timeout=300)
            sent += 1
    return 0


def run_case(case: Case, repo: Path, p99: bool = False) -> Result:
    request = case.build()
    with tensorwire_server(repo, *case.server_args) as server:
        warm(server, case.model)
        sent = send_measured(server, request)
        latency = {"tensorwire": small_p99(server, request, 3, 300)} if p99 else {}
    floor = grpcio_floor(request, sent.response_bytes)
    if p99:  # the same load on bare grpcio answering small requests: what grpcio alone does to others
        with echo_server(SMALL_ANSWER_BYTES) as echo:
            latency["grpcio"] = small_p99(echo, request, 3, 300)
    wire = round(len(request) / MiB, 1)
    return Result(case.name, case.what, wire, sent.status, sent.message[:300], sent.peak_mib, floor,
                  bound_for(case, wire, floor, sent.response_bytes), latency)


def markdown(results: list[Result]) -> str:
    lines = ["| case | wire MiB | status | server peak MiB | bare grpcio peak MiB | bound MiB | within | "
             "small p99 ms: tensorwire idle / loaded | bare grpcio idle / loaded |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in results:
        p = r.small_p99_ms
        ours = f"{p['tensorwire']['idle_ms']} / {p['tensorwire']['loaded_ms']}" if p else "-"
        floor = f"{p['grpcio']['idle_ms']} / {p['grpcio']['loaded_ms']}" if p else "-"
        within = "yes" if r.server_peak_mib <= r.bound_mib else "NO"
        lines.append(f"| {r.case}: {r.what} | {r.wire_mib} | {r.status} | {r.server_peak_mib} | "
                     f"{r.grpcio_peak_mib} | {r.bound_mib} | {within} | {ours} | {floor} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated case names (default: all)")
    parser.add_argument("--p99", action="store_true",
                        help="also measure a small-request client's p99, idle and while another process sends "
                        "the case (3 times, and for at least 3 s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for memory.json and memory.md (default: none)")


def run(args: argparse.Namespace) -> int:
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    by_name = {c.name: c for c in CASES}
    unknown = [c for c in wanted if c not in by_name]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(by_name)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="tensorwire-memory-") as tmp:
        repo = write_repository(Path(tmp) / "repo")
        for name in wanted:
            results.append(run_case(by_name[name], repo, args.p99))
            print(json.dumps(asdict(results[-1])), flush=True)
    table = markdown(results)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
        (args.out / "memory.md").write_text(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--send"]:  # the loading client of small_p99, in its own process
        return _send(argv[1], argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(prog="tensorwire bench memory", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
