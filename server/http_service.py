"""The KServe v2 HTTP/REST front end (Triton's paths, JSON and binary tensor data) over the data plane.

An ASGI application served by uvicorn with httptools (the measured choice: docs/design.md,
bench/results/http/). The event loop only parses HTTP, reads bodies within their bounds and writes answers:
everything that costs CPU (JSON, the model, encoding) runs on a pool of ``--http-thread-count`` threads, so
a slow model never stalls another client. Every operation is the data plane's, as for gRPC: admission
(``--max-concurrent-rpcs``, health exempt), draining, statistics and limits are the same objects.
Routes, bodies and errors are ``http_routes.py``'s and ``http_json.py``'s; the connection bounds (header
size and count, header and body timeouts) are ``http_protocol.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tensorwire.errors import Cancelled, DeadlineExceeded, InvalidArgument, RequestError, ResourceExhausted
from tensorwire.server.call import Call
from tensorwire.server.dataplane import ADMISSION_REFUSED, DataPlane
from tensorwire.server.http_json import dumps
from tensorwire.server.http_routes import GZIP_MIN_BYTES, Reply, Request, error_reply, route
from tensorwire.server.security import check_restricted_protocols
from tensorwire.server.settings import ServerSettings

# The slowest a request body may arrive on average, beyond --http-body-timeout: 64 MiB in a minute.
MIN_BODY_RATE = 1 << 20
log = logging.getLogger("tensorwire.http")
# The HTTP server underneath: uvicorn (httptools, uvloop), the measured choice; "granian" runs the same
# application on granian for the comparison in bench/http_servers.py (docs/design.md).
ENGINE_ENV = "TENSORWIRE_HTTP_ENGINE"
# Content-Encoding values a request body may have, as Triton's: gzip and deflate (zlib's wbits for each).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyTooLarge(ResourceExhausted):
    """A request body (or what it decompresses to) beyond --max-message-mb: 413."""

    http_status = 413


class BodyTimeout(DeadlineExceeded):
    """A request body that stalled past --http-body-timeout: 408, and the connection closes."""

    http_status = 408


class Disconnected(Cancelled):
    """The client went away while its body was being read."""


class HttpApp:
    """The ASGI application: route, check restriction and admission, read the body, run, answer."""

    def __init__(self, plane: DataPlane, executor: ThreadPoolExecutor) -> None:
        self.plane = plane
        self.executor = executor
        s = plane.settings
        self.limit = s.max_message_bytes
        self.body_timeout = s.http_body_timeout
        self.restricted = {c: r for r in check_restricted_protocols(s.http_restricted_api, "--http-restricted-api", "")
                           for c in r.categories}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            reply = await self._answer(scope, receive)
            encoding = _accepted_encoding(scope)
            if encoding and reply.size() >= GZIP_MIN_BYTES:  # compressed on the pool, not on the event loop
                reply = await asyncio.get_running_loop().run_in_executor(self.executor, reply.compressed, encoding)
        except RequestError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # a bug: the log has the traceback, the client a 500
            log.exception("internal error in HTTP handler")
            reply = Reply(500, dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}))
        await reply.send(send)

    async def _answer(self, scope, receive) -> Reply:
        endpoint, args = route(scope["method"], scope["path"])
        rule = self.restricted.get(endpoint.category)
        if rule is not None and not rule.allows((k.decode("latin-1"), v) for k, v in scope["headers"]):
            return Reply(403, dumps({"error": f"This API is restricted, expecting header '{rule.header}'"}))
        if endpoint.category == "health":  # cheap, never admitted nor refused: probes always get through
            return endpoint.run(self.plane, args, None)
        admission = self.plane.admission
        if not admission.try_enter():
            return Reply(429, dumps({"error": ADMISSION_REFUSED}))
        watch = None
        try:
            request = await self._request(scope, receive) if endpoint.body else Request(scope, b"")
            token = _header(scope, self.plane.token_header)
            if endpoint.category == "inference":
                # With the body read, the next receive() returns only when the client goes away (or the answer
                # is sent): the model sees that through Call.is_active and drops the request if still queued.
                watch = asyncio.ensure_future(receive())
                request.call = Call.of_http(lambda: not watch.done(), shm_token=token)
            elif token is not None:
                request.call = Call.of_http(None, shm_token=token)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, endpoint.run, self.plane, args, request)
        finally:
            admission.leave()
            if watch is not None:
                watch.cancel()

    async def _request(self, scope, receive) -> Request:
        """The body, bounded before it costs memory: Content-Length checked before a byte is read, chunked
        bodies counted as they arrive, each part within --http-body-timeout, then decompressed within the
        same bound."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        header_length = headers.get(b"inference-header-content-length")
        size = _int_header(length, "Content-Length") if length is not None else None
        if size is not None and size > self.limit:
            raise BodyTooLarge(f"request body of {size} bytes is larger than this server's limit of {self.limit} "
                               "bytes (--max-message-mb)")
        hlen = _int_header(header_length, "Inference-Header-Content-Length") if header_length is not None else None
        body = await self._read(receive, size, hlen)
        encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        if encoding and encoding != "identity":  # on the pool: a large body must not stall the event loop
            loop = asyncio.get_running_loop()
            body = memoryview(await loop.run_in_executor(self.executor, _decompress, body, encoding, self.limit))
        return Request(scope, body, hlen)

    async def _read(self, receive, size: int | None, header_length: int | None) -> memoryview:
        """Read the body into one buffer; with Content-Length known, placed so that the binary data after a
        JSON header of ``header_length`` bytes starts 64-byte aligned (binary inputs are then used in place)."""
        chunks: list[bytes] = []
        total = 0
        view = None
        if size is not None:  # np.empty, not bytearray: pages cost memory only as the body fills them
            buf = np.empty(size + 64, np.uint8)
            start = (-(buf.ctypes.data + (header_length or 0))) % 64
            view = memoryview(buf)[start:start + size]
        loop = asyncio.get_running_loop()
        # A whole body, not only each part, has a deadline: a client trickling a byte per part would hold its
        # buffer and its admission slot for ever.
        deadline = loop.time() + self.body_timeout + (size or self.limit) / MIN_BODY_RATE
        while True:
            try:
                message = await asyncio.wait_for(receive(), min(self.body_timeout, max(deadline - loop.time(), 0)))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body stalled: {self.body_timeout:g} s without a part "
                                  f"(--http-body-timeout), or slower than {MIN_BODY_RATE >> 10} KiB/s") from None
            if message["type"] == "http.disconnect":
                raise Disconnected("client went away")
            part = message.get("body", b"")
            if part:
                if total + len(part) > (size if size is not None else self.limit):
                    if size is not None:
                        raise InvalidArgument(f"request body is longer than its Content-Length {size}")
                    raise BodyTooLarge(f"chunked request body is larger than this server's limit of {self.limit} "
                                       "bytes (--max-message-mb)")
                if view is not None:
                    view[total:total + len(part)] = part
                else:
                    chunks.append(part)
                total += len(part)
            if not message.get("more_body", False):
                break
        if view is not None:
            return view[:total]
        return memoryview(b"".join(chunks))


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


def _accepted_encoding(scope) -> str:
    """The answer's Content-Encoding a client accepts, as Triton offers them: gzip, else deflate, else none."""
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            value = value.lower()
            return "gzip" if b"gzip" in value else "deflate" if b"deflate" in value else ""
    return ""


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _ssl_options(s: ServerSettings) -> dict:
    if not s.http_tls:
        return {}
    options = {"ssl_certfile": str(s.grpc_server_cert), "ssl_keyfile": str(s.grpc_server_key)}
    if s.http_use_ssl_mutual:
        options.update(ssl_ca_certs=str(s.grpc_root_cert), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


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
    """uvicorn on its own thread and event loop, with ``--http-thread-count`` threads for the work."""

    name = "http"

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.port = 0
        self._server = None
        self._granian = None
        self._granian_loop = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> int:
        if os.environ.get(ENGINE_ENV, "uvicorn") == "granian":
            return self._start_granian()
        import uvicorn

        from tensorwire.server.http_protocol import BoundedHttpToolsProtocol

        s = self.plane.settings
        self._executor = ThreadPoolExecutor(s.http_thread_count, thread_name_prefix="tensorwire-http")
        sock = _listen_socket(s)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            HttpApp(self.plane, self._executor), http=BoundedHttpToolsProtocol.configured(s), loop="uvloop",
            lifespan="off", access_log=False, log_config=None, log_level="warning", server_header=False,
            date_header=False,
            timeout_keep_alive=int(max(1, s.http_keepalive_timeout)), timeout_graceful_shutdown=s.shutdown_grace_s,
            ws="none", **_ssl_options(s))
        self._server = uvicorn.Server(config)
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, started), name="tensorwire-http-loop",
                                        daemon=True)
        self._thread.start()
        started.wait(30)
        log.info("HTTP/REST on %s:%d (%s)", s.http_address or s.host, self.port,
                 "mutual TLS" if s.http_use_ssl_mutual else "TLS" if s.http_tls else "plaintext")
        if s.http_port_file:
            s.http_port_file.write_text(str(self.port))
        return self.port

    def _start_granian(self) -> int:
        """granian (Rust, hyper) under the same application: the measured alternative (bench/http_servers.py).
        Needs a fixed --http-port; uvicorn's connection bounds (http_protocol.py) do not apply to it."""
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server

        s = self.plane.settings
        self._executor = ThreadPoolExecutor(s.http_thread_count, thread_name_prefix="tensorwire-http")
        app = HttpApp(self.plane, self._executor)
        server = Server(app, address=s.http_address or s.host, port=s.http_port, interface=Interfaces.ASGINL,
                        http=HTTPModes.http1, websockets=False, log_enabled=False, backlog=2048)
        self._granian = server
        started = threading.Event()

        def run() -> None:
            async def main() -> None:
                self._granian_loop = asyncio.get_running_loop()
                started.set()
                await server.serve()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="tensorwire-http-loop", daemon=True)
        self._thread.start()
        started.wait(30)
        time.sleep(0.5)  # granian binds inside serve(); give it the moment it takes
        self.port = s.http_port
        log.info("HTTP/REST on %s:%d (granian)", s.http_address or s.host, self.port)
        if s.http_port_file:
            s.http_port_file.write_text(str(self.port))
        return self.port

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        import uvloop

        async def main() -> None:
            task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
            while not self._server.started and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            await task

        uvloop.run(main())

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give requests in flight ``grace`` seconds."""
        if self._granian is not None:
            self._granian_loop.call_soon_threadsafe(self._granian.stop)
        if self._server is not None:
            self._server.config.timeout_graceful_shutdown = grace
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(grace + 5)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _header(scope: dict, name: str | None) -> str | None:
    """The value of request header ``name`` (lower case), None when absent or when ``name`` is None."""
    if name is None:
        return None
    wanted = name.encode("latin-1")
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == wanted), None)
