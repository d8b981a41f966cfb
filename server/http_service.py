"""The KServe v2 HTTP/REST front end (Triton's paths, JSON and binary tensor data) over the data plane.

Our own asyncio protocol (``http_protocol.py``: httptools' llhttp parser on a uvloop event loop, the measured
choice: docs/design.md, bench/results/http/) parses requests and writes answers; this module decides what a
request's head asks for (route, restriction, admission, the body's bound), and runs the rest on a pool of
``--http-thread-count`` threads: decompression, JSON, the model and encoding, so a slow model never stalls
another client. A request crosses threads twice, each time with the least machinery: a ``SimpleQueue`` put to
the pool, one ``call_soon_threadsafe`` back with the encoded answer, which the loop writes in one call. Every
operation is the data plane's, as for gRPC: admission (``--max-concurrent-rpcs``, health exempt), draining,
statistics and limits are the same objects. Routes, bodies and errors are ``http_routes.py``'s and
``http_json.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import ssl
import threading
import time
import zlib

import numpy as np

from tensorwire.errors import InvalidArgument, RequestError, ResourceExhausted
from tensorwire.server.call import Call
from tensorwire.server.dataplane import ADMISSION_REFUSED, DataPlane
from tensorwire.server.http_json import dumps
from tensorwire.server.http_protocol import Exchange, HttpConnection, Limits, status_line
from tensorwire.server.http_routes import GZIP_MIN_BYTES, Endpoint, Reply, Request, error_reply, route
from tensorwire.server.security import check_restricted_protocols
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.http")
# Content-Encoding values a request body may have, as Triton's: gzip and deflate (zlib's wbits for each).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyTooLarge(ResourceExhausted):
    """A request body (or what it decompresses to) beyond --max-message-mb: 413."""

    http_status = 413


class Body:
    """A request body as it arrives, bounded before it costs memory: with a Content-Length, one buffer placed so
    that the binary data after a JSON header of ``header_length`` bytes starts 64-byte aligned (binary inputs
    are then used in place); chunked, parts counted against --max-message-mb."""

    __slots__ = ("view", "chunks", "total", "expected", "limit")

    def __init__(self, size: int | None, header_length: int | None, limit: int) -> None:
        self.total = 0
        self.limit = limit
        self.expected = size if size is not None else limit
        self.chunks: list[bytes] = []
        self.view = None
        if size is not None:  # np.empty, not bytearray: pages cost memory only as the body fills them
            buf = np.empty(size + 64, np.uint8)
            start = (-(buf.__array_interface__["data"][0] + (header_length or 0))) % 64
            self.view = memoryview(buf)[start:start + size]

    def add(self, part: bytes) -> None:
        end = self.total + len(part)
        if self.view is not None:
            if end > len(self.view):
                raise InvalidArgument(f"request body is longer than its Content-Length {len(self.view)}")
            self.view[self.total:end] = part
        else:
            if end > self.limit:
                raise BodyTooLarge(f"chunked request body is larger than this server's limit of {self.limit} "
                                   "bytes (--max-message-mb)")
            self.chunks.append(part)
        self.total = end

    def value(self) -> memoryview:
        if self.view is not None:
            return self.view[:self.total]
        return memoryview(self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks))


class Pending:
    """What the application decided of a request from its head: the endpoint, and whether it holds admission."""

    __slots__ = ("endpoint", "args", "admitted", "header_length")

    def __init__(self, endpoint: Endpoint, args: dict) -> None:
        self.endpoint = endpoint
        self.args = args
        self.admitted = False
        self.header_length: int | None = None


class HttpApp:
    """Route, check restriction and admission and bound the body from a request's head (on the event loop);
    decode, run and encode on ``--http-thread-count`` threads; hand the encoded answer back to the loop."""

    def __init__(self, plane: DataPlane, threads: int) -> None:
        self.plane = plane
        s = plane.settings
        self.limit = s.max_message_bytes
        self.restricted = {c: r for r in check_restricted_protocols(s.http_restricted_api, "--http-restricted-api", "")
                           for c in r.categories}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._worker, name=f"tensorwire-http_{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    # -- on the event loop ---------------------------------------------------------------------------------
    def head(self, ex: Exchange) -> None:
        """A request's head is in: refuse it now (answered in its turn) or say where its body goes."""
        try:
            endpoint, args = route(ex.method, ex.path)
            rule = self.restricted.get(endpoint.category)
            if rule is not None and not rule.allows((k.decode("latin-1"), v) for k, v in ex.headers):
                ex.answer = encode(Reply(403, dumps({"error": f"This API is restricted, expecting header "
                                                               f"'{rule.header}'"})), ex)
                return
            pending = ex.state = Pending(endpoint, args)
            if endpoint.category == "health":  # cheap, never admitted nor refused: probes always get through
                return
            if not self.plane.admission.try_enter():
                ex.answer = encode(Reply(429, dumps({"error": ADMISSION_REFUSED})), ex)
                return
            pending.admitted = True
            if endpoint.body:
                ex.body = self._body(ex, pending)
        except RequestError as exc:
            self.refuse(ex, exc)

    def _body(self, ex: Exchange, pending: Pending) -> Body:
        """The body's sink, Content-Length checked against --max-message-mb before a byte is read."""
        size = hlen = None
        for name, value in ex.headers:
            if name == b"content-length":
                size = _int_header(value, "Content-Length")
            elif name == b"inference-header-content-length":
                hlen = _int_header(value, "Inference-Header-Content-Length")
            elif name == b"expect":
                ex.expect = value.lower() == b"100-continue"
        if size is not None and size > self.limit:
            raise BodyTooLarge(f"request body of {size} bytes is larger than this server's limit of {self.limit} "
                               "bytes (--max-message-mb)")
        pending.header_length = hlen
        return Body(size, hlen, self.limit)

    def refuse(self, ex: Exchange, exc: Exception) -> None:
        """Answer ``ex`` with ``exc`` in its turn, without reading (more of) its body."""
        self.dropped(ex)
        reply = error_reply(exc) if isinstance(exc, RequestError) else _internal(exc)
        if reply.close:
            ex.keep_alive = False
        ex.answer = encode(reply, ex)

    def dropped(self, ex: Exchange) -> None:
        """``ex`` is never started (its connection closed, its body was refused): its admission is free."""
        pending = ex.state
        if pending is not None and pending.admitted:
            pending.admitted = False
            self.plane.admission.leave()

    def start(self, conn: HttpConnection, ex: Exchange) -> list | None:
        """The request's turn: health is answered here (its encoded answer), the rest on the threads (None)."""
        if ex.state.endpoint.category == "health":
            return encode(ex.state.endpoint.run(self.plane, ex.state.args, None), ex)
        self._jobs.put((conn, ex))
        return None

    # -- on the threads ------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, ex = job
            reply = self._answer(conn, ex)
            data = encode(reply, ex, conn.draining)
            try:
                self.loop.call_soon_threadsafe(conn.answered, ex, data, reply.close)
            except RuntimeError:  # the loop is gone: the server stopped
                return

    def _answer(self, conn: HttpConnection, ex: Exchange) -> Reply:
        pending = ex.state
        try:
            try:
                reply = self._run(conn, ex, pending)
            finally:
                self.dropped(ex)
            encoding = _accepted_encoding(ex.headers)
            if encoding and reply.size() >= GZIP_MIN_BYTES:
                reply = reply.compressed(encoding)
            return reply
        except RequestError as exc:
            return error_reply(exc)
        except Exception as exc:  # a bug: the log has the traceback, the client a 500
            log.exception("internal error in HTTP handler")
            return _internal(exc)

    def _run(self, conn: HttpConnection, ex: Exchange, pending: Pending) -> Reply:
        body = ex.body.value() if ex.body is not None else b""
        encoding = _header(ex.headers, "content-encoding")
        if body and encoding and encoding.strip().lower() != "identity":
            body = memoryview(_decompress(body, encoding.strip().lower(), self.limit))
        request = Request(ex.headers, body, pending.header_length)
        token = _header(ex.headers, self.plane.token_header)
        if pending.endpoint.category == "inference":
            # The model sees a closed connection through Call.is_active and drops the request if still queued.
            request.call = Call.of_http(lambda: not conn.closed, shm_token=token)
        elif token is not None:
            request.call = Call.of_http(None, shm_token=token)
        return pending.endpoint.run(self.plane, pending.args, request)


def encode(reply: Reply, ex: Exchange, draining: bool = False) -> list:
    """The whole answer as buffers for one write: status line, headers, body (none for HEAD)."""
    parts = [reply.body, *reply.parts] if reply.body else list(reply.parts)
    size = sum(memoryview(p).nbytes for p in parts)
    head = [status_line(reply.status), b"content-type: ", reply.content_type, b"\r\ncontent-length: ",
            str(size).encode()]
    for name, value in reply.headers:
        head += [b"\r\n", name, b": ", value]
    if reply.close or not ex.keep_alive or draining:
        head.append(b"\r\nconnection: close")
    head.append(b"\r\n\r\n")
    if ex.head_only:
        return [b"".join(head)]
    return [b"".join(head), *parts]


def _internal(exc: Exception) -> Reply:
    return Reply(500, dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}))


def _int_header(value: bytes, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} header {value[:32]!r} is not an integer") from None
    if n < 0:
        raise InvalidArgument(f"{name} header must not be negative, got {n}")
    return n


def _decompress(body: memoryview, encoding: str, limit: int) -> bytes:
    """The decompressed body; refused the moment it would pass ``limit`` (a gzip bomb costs at most that)."""
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}'; this server accepts gzip and deflate")
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise BodyTooLarge(f"request body decompresses to more than this server's limit of {limit} bytes "
                           "(--max-message-mb)")
    return out


def _accepted_encoding(headers: list) -> str:
    """The answer's Content-Encoding a client accepts, as Triton offers them: gzip, else deflate, else none."""
    for name, value in headers:
        if name == b"accept-encoding":
            value = value.lower()
            return "gzip" if b"gzip" in value else "deflate" if b"deflate" in value else ""
    return ""


def _ssl_context(s: ServerSettings) -> ssl.SSLContext | None:
    if not s.http_tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(s.grpc_server_cert), str(s.grpc_server_key))
    if s.http_use_ssl_mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(s.grpc_root_cert))
    return context


def _listen_socket(s: ServerSettings) -> socket.socket:
    host = s.http_address or s.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if s.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), s.http_port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class HttpFrontend:
    """The connections on their own thread and uvloop event loop, the work on ``--http-thread-count`` threads."""

    name = "http"

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.port = 0
        self._app: HttpApp | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[HttpConnection] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        s = self.plane.settings
        context = _ssl_context(s)  # before any thread: a bad certificate fails the start
        sock = _listen_socket(s)
        self.port = sock.getsockname()[1]
        self._app = HttpApp(self.plane, s.http_thread_count)
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, context, started), name="tensorwire-http-loop",
                                        daemon=True)
        self._thread.start()
        started.wait(30)
        log.info("HTTP/REST on %s:%d (%s)", s.http_address or s.host, self.port,
                 "mutual TLS" if s.http_use_ssl_mutual else "TLS" if s.http_tls else "plaintext")
        if s.http_port_file:
            s.http_port_file.write_text(str(self.port))
        return self.port

    def _run(self, sock: socket.socket, context: ssl.SSLContext | None, started: threading.Event) -> None:
        import uvloop

        s = self.plane.settings
        limits = Limits(s.http_max_header_kb << 10, s.http_max_headers, s.http_header_timeout, s.http_body_timeout,
                        max(1.0, s.http_keepalive_timeout))
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = self._app.loop = loop
        app, connections = self._app, self._connections
        self._server = loop.run_until_complete(loop.create_server(
            lambda: HttpConnection(app, limits, connections), sock=sock, ssl=context, backlog=2048))
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _drain(self, grace: float) -> None:
        """Stop accepting, close idle connections, give requests in flight ``grace`` seconds, close the rest."""
        self._server.close()
        for conn in list(self._connections):
            conn.shutdown()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.transport.abort()

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give requests in flight ``grace`` seconds."""
        loop = self._loop
        if loop is not None and self._thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._drain(grace), loop).result(grace + 5)
            except Exception:  # the loop stops below either way
                log.exception("HTTP drain failed")
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
        self._thread = None
        if self._app is not None:
            self._app.close()


def _header(headers: list, name: str | None) -> str | None:
    """The value of request header ``name`` (lower case), None when absent or when ``name`` is None."""
    if name is None:
        return None
    wanted = name.encode("latin-1")
    return next((value.decode("latin-1") for key, value in headers if key == wanted), None)
