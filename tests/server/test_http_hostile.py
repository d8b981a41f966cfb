"""Hostile HTTP against a real server over raw sockets: every request that could cost the server memory,
threads or sockets gets its status (or a closed connection) before the cost is paid, and another client's
requests succeed meanwhile."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serving import start_server

LIMIT_MB = 1
ARGS = ("--max-message-mb", str(LIMIT_MB), "--max-typed-contents-mb", "0.5", "--http-header-timeout", "1",
        "--http-body-timeout", "1",
        "--max-concurrent-rpcs", "8", "--http-max-header-kb", "8", "--http-max-headers", "20",
        "--http-restricted-api", "model-repository:admin-key=s3cret")
# Safety bound for loops that wait on the server: a broken server fails the test instead of hanging it.
WAIT_S = 30.0


@pytest.fixture(scope="module")
def hostile_server(test_repository):
    with start_server(test_repository, *ARGS) as s:
        yield s


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return sock


def _read_reply(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP response (status, headers, body); status 0 if the server closed without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with contextlib.closing(_connect(port)) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return _read_reply(sock)


def _infer_body(data, shape=(1, 16), datatype="FP32") -> bytes:
    return json.dumps({"inputs": [{"name": n, "shape": list(shape), "datatype": datatype, "data": data}
                                  for n in ("INPUT0", "INPUT1")]}).encode()


def _healthy(port: int) -> None:
    """Another client's requests succeed: health, and an inference with the right answer."""
    assert _request(port, "GET", "/v2/health/ready")[0] == 200
    status, _, body = _request(port, "POST", "/v2/models/add_sub/infer", _infer_body([1.0] * 16))
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [2.0] * 16


def _error(reply) -> str:
    return json.loads(reply[2])["error"]


def test_oversized_content_length_refused_before_the_body(hostile_server):
    port = hostile_server.http_port
    with contextlib.closing(_connect(port)) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (LIMIT_MB * 2**20 + 1))
        reply = _read_reply(sock)  # no body byte was sent: the answer comes from the headers alone
    assert reply[0] == 413 and "--max-message-mb" in _error(reply)
    _healthy(port)


def test_endless_chunked_body_is_cut_at_the_limit(hostile_server):
    port = hostile_server.http_port
    sent = 0
    with contextlib.closing(_connect(port)) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
        with contextlib.suppress(OSError):
            while sent < 64 * LIMIT_MB * 2**20:  # far past the limit: the server must have answered by then
                sock.sendall(chunk)
                sent += 65536
        reply = _read_reply(sock)
    assert reply[0] == 413 and "chunked" in _error(reply)
    assert sent < 16 * LIMIT_MB * 2**20
    _healthy(port)


def test_gzip_bomb_is_refused_at_the_decompressed_limit(hostile_server):
    port = hostile_server.http_port
    rss = _rss_kb(hostile_server.process.pid)
    bomb = gzip.compress(b" " * (256 * 2**20), compresslevel=9)  # 256 MiB of spaces in ~250 KiB
    assert len(bomb) < LIMIT_MB * 2**20
    reply = _request(port, "POST", "/v2/models/add_sub/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply[0] == 413 and "decompresses" in _error(reply)
    assert _rss_kb(hostile_server.process.pid) - rss < 64 * 1024
    _healthy(port)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "malformed JSON"),
    (b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    (_infer_body([1.0] * 17), 400, "'data' has 17 elements but shape [1,16] holds 16"),
    (_infer_body([1.0] * 15), 400, "'data' has 15 elements"),
    (_infer_body([1.0], shape=(2**20, 2**20)), 400, "holds 1099511627776"),
    (_infer_body([[1.0] * 16]), 200, ""),
    (_infer_body([[1.0] * 15 + [[1.0]]]), 400, "nested more deeply"),
    (_infer_body(["1"] * 16), 400, "holds strings but the datatype is FP32"),
    (_infer_body([1] * 16, datatype="INT32"), 400, "datatype INT32 does not match the model"),
    # dims of thousands of digits: refused before any product of them is computed (seconds each)
    (_infer_body([1.0], shape=[int("9" * 4000)] * 30), 400, "must be 64-bit integers"),
    (_infer_body([1.0], shape=[1] * 40), 400, "'shape' has 40 dimensions"),
])
def test_malformed_requests_are_400_with_a_reason(hostile_server, body, status, words):
    reply = _request(hostile_server.http_port, "POST", "/v2/models/add_sub/infer", body)
    assert reply[0] == status, reply
    if words:
        assert words in _error(reply)


def test_timeout_parameter_is_the_deadline(hostile_server):
    """Triton's request parameter 'timeout' (microseconds): a request whose deadline passed before it ran is
    not computed, 504; a bad value is 400; a generous one changes nothing."""
    body = json.loads(_infer_body([1.0] * 16))
    port = hostile_server.http_port
    for timeout, status in ((1, 504), (-5, 400), ("soon", 400), (10**400, 400), (60_000_000, 200)):
        body["parameters"] = {"timeout": timeout}
        reply = _request(port, "POST", "/v2/models/add_sub/infer", json.dumps(body).encode())
        assert reply[0] == status, reply
    assert "deadline passed" in _error(_request(port, "POST", "/v2/models/add_sub/infer", json.dumps(
        {**body, "parameters": {"timeout": 1}}).encode()))


def test_json_part_is_bounded_before_it_is_parsed(hostile_server):
    """600 KB of JSON numbers (under --max-message-mb 1, over --max-typed-contents-mb 0.5) is refused before
    json.loads turns it into ~5 MB of Python objects."""
    reply = _request(hostile_server.http_port, "POST", "/v2/models/add_sub/infer", b"[" + b"0.5," * 150_000 + b"0]")
    assert reply[0] == 413 and "--max-typed-contents-mb" in _error(reply)  # a size: not worth a retry
    _healthy(hostile_server.http_port)


def test_binary_shape_of_2_40_elements_is_400(hostile_server):
    header = json.dumps({"inputs": [{"name": n, "shape": [2**20, 2**20], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4}} for n in ("INPUT0", "INPUT1")]}).encode()
    reply = _request(hostile_server.http_port, "POST", "/v2/models/add_sub/infer", header + b"\0" * 8,
                     {"Inference-Header-Content-Length": len(header)})
    assert reply[0] == 400, reply


def test_binary_data_size_past_the_body_is_400(hostile_server):
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    reply = _request(hostile_server.http_port, "POST", "/v2/models/add_sub/infer", header + b"\0" * 8,
                     {"Inference-Header-Content-Length": len(header)})
    assert reply[0] == 400 and "runs past the end of the body" in _error(reply)


def test_headers_over_the_limits_are_431(hostile_server):
    port = hostile_server.http_port
    big = _request(port, "GET", "/v2/health/live", headers={"X-Big": "a" * 20_000})
    assert big[0] == 431
    many = _request(port, "GET", "/v2/health/live", headers={f"X-H{i}": "1" for i in range(30)})
    assert many[0] == 431
    with contextlib.closing(_connect(port)) as sock:  # one header line without end
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Endless: ")
        with contextlib.suppress(OSError):
            for _ in range(64):
                sock.sendall(b"a" * 65536)
        assert _read_reply(sock)[0] in (431, 0)
    _healthy(port)


def test_unknown_path_404_and_wrong_method_405(hostile_server):
    port = hostile_server.http_port
    reply = _request(port, "GET", "/v2/no/such/thing")
    assert reply[0] == 404 and "error" in json.loads(reply[2])
    assert _request(port, "GET", "/v2/models/add_sub/infer")[0] == 405
    reply = _request(port, "POST", "/v2/models/no_such_model/infer", _infer_body([1.0] * 16))
    assert reply[0] == 404 and "no_such_model" in _error(reply)


def test_restricted_api_needs_its_header(hostile_server):
    port = hostile_server.http_port
    reply = _request(port, "POST", "/v2/repository/index", b"{}")
    assert reply[0] == 403 and _error(reply) == "This API is restricted, expecting header 'admin-key'"
    assert _request(port, "POST", "/v2/repository/index", b"{}", {"admin-key": "wrong"})[0] == 403
    reply = _request(port, "POST", "/v2/repository/index", b"{}", {"admin-key": "s3cret"})
    assert reply[0] == 200 and any(m["name"] == "add_sub" for m in json.loads(reply[2]))


def test_admission_is_shared_and_health_is_exempt(hostile_server):
    """Stalled bodies hold --max-concurrent-rpcs (8) slots: the next call is 429, probes still answer, and the
    stalled ones are answered 408 at --http-body-timeout, after which calls are admitted again."""
    port = hostile_server.http_port
    stalled = []
    for _ in range(8):
        sock = _connect(port)
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        stalled.append(sock)
    deadline = time.monotonic() + WAIT_S
    refused = None
    while time.monotonic() < deadline:
        refused = _request(port, "POST", "/v2/models/add_sub/infer", _infer_body([1.0] * 16))
        if refused[0] == 429:
            break
    assert refused[0] == 429 and _error(refused) == "Concurrent RPC limit exceeded!"
    assert _request(port, "GET", "/v2/health/ready")[0] == 200
    assert _request(port, "GET", "/v2/models/add_sub/ready")[0] == 200
    for sock in stalled:
        with contextlib.closing(sock):
            assert _read_reply(sock)[0] == 408
    _healthy(port)


def test_300_slowloris_connections_freeze_nothing(hostile_server):
    port = hostile_server.http_port
    socks = [_connect(port) for _ in range(300)]
    for sock in socks:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    _healthy(port)  # while all 300 hold their connection open
    closed = 0
    for sock in socks:
        with contextlib.closing(sock):
            with contextlib.suppress(OSError):
                sock.sendall(b"a")  # one more byte: the head timer counts from the first, not the last
            status = _read_reply(sock)[0]  # the head timeout closes it, with a 408 when the socket allows
            assert status in (408, 0)
            closed += 1
    assert closed == 300
    _healthy(port)


def test_rss_stays_bounded_after_the_hostile_requests(hostile_server):
    """After everything above, the server holds no more than a small multiple of its message limit."""
    for _ in range(3):
        reply = _request(hostile_server.http_port, "POST", "/v2/models/add_sub/infer",
                         gzip.compress(b" " * (64 * 2**20)), {"Content-Encoding": "gzip"})
        assert reply[0] == 413
    assert _rss_kb(hostile_server.process.pid) < 1024 * 1024  # 1 GiB: ONNX Runtime and models included


def test_binary_inputs_with_curl_like_client(hostile_server):
    """urllib (a client nobody here wrote) with Triton's binary extension: JSON header, then the bytes."""
    a = np.arange(16, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}} for n in ("INPUT0", "INPUT1")],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    req = urllib.request.Request(f"{hostile_server.http_url}/v2/models/add_sub/infer",
                                 data=header + a.tobytes() * 2,
                                 headers={"Inference-Header-Content-Length": str(len(header))})
    with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
        body = resp.read()
        json_len = int(resp.headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:json_len])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(np.frombuffer(body[json_len:], np.float32), a + a)


@pytest.mark.parametrize("args, words", [
    (("--grpc-restricted-protocol", "inference:k=v"), "--http-restricted-api for inference"),
    (("--grpc-restricted-protocol", "inference,health:k=v", "--http-restricted-api", "inference:k=v"),
     "--http-restricted-api for health"),
    (("--http-port", "0", "--http-max-headers", "0"), "--http-max-headers must be positive"),
])
def test_http_never_the_open_side_door_of_a_locked_grpc(test_repository, args, words):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(test_repository),
                          "--grpc-port", "0", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and words in out.stderr, out.stderr
    if "restricted" in words:
        assert "--allow-http=false" in out.stderr


def test_locked_grpc_serves_with_http_off(test_repository):
    with start_server(test_repository, "--grpc-restricted-protocol", "inference:k=v", "--allow-http=false") as s:
        assert s.http_port is None
    assert "HTTP/REST" not in s.log()


def _slow_model():
    """X [n, 512] FP32 through 200 chained 512x512 identity MatMuls: about a second per call at n=2048."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes, prev = [], "X"
    for i in range(200):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    w = np.eye(512, dtype=np.float32)
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("X", f, ["n", 512])],
                              [helper.make_tensor_value_info("Y", f, ["n", 512])],
                              initializer=[helper.make_tensor("W", f, [512, 512], w.reshape(-1).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_sigterm_drains_http_requests_and_counts_them(tmp_path):
    """A request inside the model when SIGTERM arrives finishes, and the shutdown line counts it."""
    import tritonclient.http as httpclient
    from models import write_model

    write_model(tmp_path / "models", "slow", _slow_model(), "max_batch_size: 0\n")
    with start_server(tmp_path / "models", "--shutdown-grace", "30") as s:
        client = httpclient.InferenceServerClient(s.http_address, network_timeout=120)
        x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("slow", [inp])  # warm up
        result: dict = {}

        def call() -> None:  # tritonclient.http's (gevent) client stays in the thread that made it
            try:
                own = httpclient.InferenceServerClient(s.http_address, network_timeout=120)
                result["y"] = own.infer("slow", [inp]).as_numpy("Y")
            except Exception as exc:  # recorded and asserted below
                result["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.3)  # the request is in the model
        s.process.terminate()
        thread.join(WAIT_S * 2)
        assert "error" not in result, result.get("error")
        np.testing.assert_allclose(result["y"], x, rtol=1e-5)
        assert s.process.wait(timeout=WAIT_S) == 0
    assert "1 request(s) in flight at the stop, all completed" in s.log()


def test_a_slow_model_stalls_no_other_http_client(tmp_path):
    """ONNX Runtime never runs on the event loop: while a slow model holds a pool thread, another model's
    requests are answered (before the slow one), and with every pool thread busy, health still answers."""
    import tritonclient.http as httpclient
    from models import ADD_SUB_CONFIG, add_sub_model, write_model

    write_model(tmp_path / "models", "slow", _slow_model(), "max_batch_size: 0\n")
    write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    with start_server(tmp_path / "models", "--http-thread-count", "2") as s:
        x = np.zeros((2048, 512), np.float32)
        done: dict[str, float] = {}

        def slow(tag: str) -> None:
            own = httpclient.InferenceServerClient(s.http_address, network_timeout=120)
            inp = httpclient.InferInput("X", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            own.infer("slow", [inp])
            done[tag] = time.monotonic()

        first = threading.Thread(target=slow, args=("slow0",))
        first.start()
        time.sleep(0.3)  # the slow request is in the model (about a second per call)
        for _ in range(3):
            _healthy(s.http_port)  # another model's inference, answered meanwhile
        fast_done = time.monotonic()
        second = threading.Thread(target=slow, args=("slow1",))
        second.start()  # now both pool threads are busy with the slow model
        assert _request(s.http_port, "GET", "/v2/health/ready")[0] == 200
        assert _request(s.http_port, "GET", "/v2/health/live")[0] == 200
        first.join(WAIT_S * 2)
        second.join(WAIT_S * 2)
    assert fast_done < done["slow0"] and set(done) == {"slow0", "slow1"}


def test_a_trickled_body_is_cut_by_its_whole_deadline(hostile_server):
    """A part every half second keeps within --http-body-timeout (1 s here), but the whole body has a deadline
    too (the timeout plus its size at 1 MiB/s): the connection is answered 408 or closed, not held."""
    port = hostile_server.http_port
    head = (b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    with contextlib.closing(_connect(port)) as sock:
        sock.sendall(head)
        start = time.monotonic()
        ended = False
        while time.monotonic() - start < WAIT_S and not ended:
            try:
                sock.sendall(b"{")
                sock.settimeout(0.5)
                ended = sock.recv(65536) is not None  # an answer, or b"" when closed
            except TimeoutError:
                continue
            except OSError:
                ended = True
        assert ended, "the trickled body was still held after the safety bound"
    _healthy(port)


def test_shared_memory_offset_below_zero_is_400(test_repository):
    """HTTP's JSON can carry a negative offset (gRPC's uint64 cannot): refused with the reason, no descriptor
    kept open (the registry checks it before it opens the object)."""
    with start_server(test_repository, "--allow-shared-memory") as s:
        body = json.dumps({"key": "/tw_http_negative", "offset": -4096, "byte_size": 8192}).encode()
        reply = _request(s.http_port, "POST", "/v2/systemsharedmemory/region/neg/register", body)
        assert reply[0] == 400 and "offset -4096 is negative" in _error(reply), reply
        _healthy(s.http_port)


def _read_replies(sock: socket.socket, methods: list[str]) -> list[tuple[int, bytes]]:
    """The answers to ``methods``' requests from one connection, in order (a HEAD's carries no body)."""
    data, replies = b"", []
    for method in methods:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(replies)} answers"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = 0 if method == "HEAD" else int(headers.get("content-length", 0))
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside an answer"
            data += chunk
        replies.append((int(lines[0].split()[1]), data[:length]))
        data = data[length:]
    return replies


def test_pipelined_requests_are_answered_in_order(hostile_server):
    """Requests sent back to back on one connection, before any answer, are answered in their order: the
    fast ones (health, a 404, HEAD) never overtake an inference ahead of them."""
    requests = [("POST", "/v2/models/add_sub/infer", _infer_body([1.0] * 16)), ("GET", "/v2/health/live", b""),
                ("GET", "/v2/models/nope", b""), ("HEAD", "/v2", b""),
                ("POST", "/v2/models/add_sub/infer", _infer_body([2.0] * 16))]
    wire = b"".join(f"{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
                    for m, p, b in requests)
    with contextlib.closing(_connect(hostile_server.http_port)) as sock:
        sock.sendall(wire)
        replies = _read_replies(sock, [m for m, _, _ in requests])
    assert [status for status, _ in replies] == [200, 200, 404, 200, 200]
    assert json.loads(replies[0][1])["outputs"][0]["data"] == [2.0] * 16
    assert replies[3][1] == b""
    assert json.loads(replies[4][1])["outputs"][0]["data"] == [4.0] * 16


def test_expect_100_continue_is_answered_before_the_body(hostile_server):
    body = _infer_body([1.0] * 16)
    with contextlib.closing(_connect(hostile_server.http_port)) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1)
            assert chunk, "closed before 100 Continue"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        status, _, answer = _read_reply(sock)
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [2.0] * 16


def test_an_idle_keepalive_connection_is_closed(test_repository):
    """--http-keepalive-timeout: a connection that asks nothing more after its answer is closed by the server
    (the socket's WAIT_S timeout fails the test if it never is)."""
    with start_server(test_repository, "--http-keepalive-timeout", "1") as s, \
            contextlib.closing(_connect(s.http_port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_reply(sock)[0] == 200
        assert sock.recv(1) == b""


def test_thousands_of_pipelined_requests_in_one_write_are_all_answered(hostile_server):
    """Answers the server gives at once (health) wait behind an inference and are then written one after
    another in a loop: a client that pipelines thousands of them in one write gets every answer and the
    connection stays usable."""
    n = 3000
    body = _infer_body([1.0] * 16)
    with contextlib.closing(_connect(hostile_server.http_port)) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * n)
        assert [status for status, _ in _read_replies(sock, ["POST"] + ["GET"] * n)] == [200] * (n + 1)
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_reply(sock)[0] == 200


def test_an_answer_too_large_for_json_is_400_and_binary_data_gets_it(hostile_server):
    """An output asked for as JSON is bounded like a JSON input (--max-typed-contents-mb, 0.5 here): 560 KB of
    FP32 would become megabytes of Python numbers and text. The same output as binary data is answered."""
    port = hostile_server.http_port
    a = np.arange(140_000, dtype=np.float32).reshape(1, -1)

    def ask(binary: bool):
        header = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, 140_000], "datatype": "FP32",
                                         "parameters": {"binary_data_size": a.nbytes}}],
                             "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": binary}}]}).encode()
        return _request(port, "POST", "/v2/models/identity_fp32/infer", header + a.tobytes(),
                        {"Inference-Header-Content-Length": len(header)})

    reply = ask(False)
    assert reply[0] == 400 and "--max-typed-contents-mb" in _error(reply) and '"binary_data": true' in _error(reply)
    status, headers, body = ask(True)
    assert status == 200, body
    np.testing.assert_array_equal(np.frombuffer(body[int(headers["inference-header-content-length"]):], np.float32),
                                  a.ravel())
    _healthy(port)
