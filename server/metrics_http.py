"""The ``/metrics`` HTTP endpoint: one thread, one event loop, every client bounded.

The port is open by default on ``--host`` and unauthenticated, so whoever reaches it must not be able to
take threads, memory or CPU from serving. A thread per connection did: a flood of idle connections made a
thread each, and every half-sent request that closed still built a full page. Here one thread runs an
asyncio server for all connections; a connection beyond :attr:`HttpBounds.max_connections` ends the oldest
connection that has not sent a whole request yet, or is closed at once if every open one has;
the request line and headers must arrive within ``header_timeout_s`` and fit in ``max_header_bytes``;
a keep-alive connection that sends nothing for ``idle_timeout_s`` is closed; an answer the client does not
read within ``write_timeout_s`` ends the connection. The page itself comes from a :class:`PageCache`:
built off the event loop, at most once per ``max_age_s``, never twice at once, and only for a request
that arrived whole.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("tensorwire.metrics")

HEAD_END = b"\r\n\r\n"
PAGE_PATH = "/metrics"


@dataclass(frozen=True)
class HttpBounds:
    """What one client may cost the endpoint (docs/security.md, "The metrics port")."""

    max_connections: int = 1024
    header_timeout_s: float = 5.0
    idle_timeout_s: float = 15.0
    write_timeout_s: float = 10.0
    max_header_bytes: int = 8192
    backlog: int = 1024


class PageCache:
    """The newest page, rebuilt at most once per ``max_age_s`` however many ask, and never twice at once.

    Readers that find it fresh take it without the lock; the rest queue on the lock, and all but the first
    find it fresh again when they get it. ``builds`` counts the builds (the tests and the benchmark read it).
    """

    def __init__(self, build: Callable[[], bytes], max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._build = build
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entry: tuple[bytes, float] | None = None
        self.builds = 0

    def fresh(self) -> bytes | None:
        """The cached page while it is younger than ``max_age_s``, else None."""
        entry = self._entry
        if entry is not None and self._clock() - entry[1] < self._max_age_s:
            return entry[0]
        return None

    def get(self) -> bytes:
        """The page, built now only when the cached one is stale (its age counts from when it was built)."""
        page = self.fresh()
        if page is not None:
            return page
        with self._lock:
            page = self.fresh()
            if page is None:
                page = self._build()
                self.builds += 1
                self._entry = (page, self._clock())
            return page


@dataclass
class _Request:
    method: str
    path: str
    keep_alive: bool


def _parse_head(head: bytes) -> _Request | None:
    """The request line and the connection rule of one request head (None when it is not HTTP/1.x)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    connection = headers.get("connection", "")
    keep_alive = connection == "keep-alive" if parts[2] == "HTTP/1.0" else connection != "close"
    if "content-length" in headers and headers["content-length"] != "0" or "transfer-encoding" in headers:
        keep_alive = False  # a body we do not read would be taken for the next request
    return _Request(parts[0], parts[1].split("?", 1)[0], keep_alive)


def _response(status: str, body: bytes, content_type: str, keep_alive: bool, head_only: bool = False,
              extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n{extra}\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


class MetricsHttpServer:
    """Serves ``cache``'s page at ``GET|HEAD /metrics`` on ``address:port`` from one thread of its own.

    The socket is bound in the constructor (an ``OSError`` reaches the caller, which names the flag); the
    event loop then runs in a daemon thread until :meth:`close`.
    """

    def __init__(self, address: str, port: int, cache: PageCache, content_type: str,
                 bounds: HttpBounds | None = None) -> None:
        self.cache = cache
        self.bounds = bounds or HttpBounds()
        self._content_type = content_type
        self._open: set[asyncio.StreamWriter] = set()
        # Open connections that have not sent a whole request yet, oldest first (a dict keeps insertion order).
        self._silent: dict[asyncio.StreamWriter, None] = {}
        self.refused = 0  # connections closed at once: max_connections were open, none of them silent
        self.evicted = 0  # silent connections ended to make room for a new one
        self._builder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-page")
        self._loop = asyncio.new_event_loop()
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._connection, address or None, port, limit=self.bounds.max_header_bytes,
                backlog=self.bounds.backlog))
        except BaseException:
            self._loop.close()
            self._builder.shutdown(wait=False)
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _evict_oldest_silent(self) -> bool:
        """Make room by ending the oldest connection that has not sent a whole request yet: during a flood of
        connections that send nothing (or half a request), a real scraper that connects still gets its page."""
        for writer in self._silent:
            del self._silent[writer]
            self._open.discard(writer)
            writer.transport.abort()
            self.evicted += 1
            return True
        return False

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self.bounds.max_connections and not self._evict_oldest_silent():
            self.refused += 1
            writer.transport.abort()
            return
        self._open.add(writer)
        self._silent[writer] = None
        writer.transport.set_write_buffer_limits(high=0)  # drain() returns once the kernel has the answer
        end = writer.transport.abort  # unless the connection ends in order: nothing of it is worth flushing
        try:
            first = True
            while await self._one_request(reader, writer, first):
                first = False
            end = writer.transport.close
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that stalls, closes early or sends too much: its connection just ends
        except asyncio.CancelledError:
            pass  # close(): the task ends here, so asyncio's stream callback finds no error to report
        finally:
            self._open.discard(writer)
            self._silent.pop(writer, None)
            end()

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes:
        """A request head: its first byte within the header timeout (a new connection) or the idle timeout
        (keep-alive), the rest by the header timeout. Raises on a timeout, an early close or an oversize head."""
        b = self.bounds
        started = self._loop.time()
        byte = await asyncio.wait_for(reader.read(1), b.header_timeout_s if first else b.idle_timeout_s)
        if not byte:
            raise asyncio.IncompleteReadError(b"", None)
        left = b.header_timeout_s - (self._loop.time() - started if first else 0.0)
        return byte + await asyncio.wait_for(reader.readuntil(HEAD_END), max(left, 0.0))

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> bool:
        """Answer one request; True when the connection stays open for another."""
        try:
            head = await self._read_head(reader, first)
            self._silent.pop(writer, None)
        except asyncio.LimitOverrunError:
            await self._send(writer, _response("431 Request Header Fields Too Large", b"", "text/plain", False))
            return False
        request = _parse_head(head)
        if request is None:
            await self._send(writer, _response("400 Bad Request", b"", "text/plain", False))
            return False
        if request.method not in ("GET", "HEAD"):
            answer = _response("405 Method Not Allowed", b"", "text/plain", request.keep_alive,
                               extra="Allow: GET, HEAD\r\n")
        elif request.path != PAGE_PATH:
            answer = _response("404 Not Found", b"", "text/plain", request.keep_alive)
        else:
            answer = await self._page_response(request)
        await self._send(writer, answer)
        return request.keep_alive

    async def _page_response(self, request: _Request) -> bytes:
        page = self.cache.fresh()
        if page is None:
            try:
                page = await self._loop.run_in_executor(self._builder, self.cache.get)
            except Exception as exc:  # a collector that fails: say so, keep serving
                log.warning("metrics page not built: %s: %s", type(exc).__name__, exc)
                body = f"metrics page not built: {type(exc).__name__}\n".encode()
                return _response("500 Internal Server Error", body, "text/plain", request.keep_alive)
        return _response("200 OK", page, self._content_type, request.keep_alive, request.method == "HEAD")

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.bounds.write_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening and end every connection now; a page being built is not waited for."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()
        self._builder.shutdown(wait=False, cancel_futures=True)

    async def _stop(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for writer in list(self._open):
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
