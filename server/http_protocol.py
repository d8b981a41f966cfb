"""One HTTP/1.1 connection: an asyncio protocol on httptools (llhttp) with every bound a hostile client needs.

The event loop parses heads and bodies here and writes answers; nothing else of a request happens on it
(``http_service.py`` hands the work to its threads). Per request this costs no Task, no future and one
transport write. The bounds: a request head is counted in bytes (``--http-max-header-kb``) and fields
(``--http-max-headers``), 431 past either; a head must arrive within ``--http-header-timeout`` (from its first
byte, or from the opening of a new connection), else 408 and close; a body must keep arriving (each part within
``--http-body-timeout``, the whole body within that plus one second per MiB), else 408 and close; an idle
keep-alive connection closes after ``--http-keepalive-timeout``. Pipelined requests are answered in order,
one at a time: reading pauses while a second one waits, and while the client does not read its answers.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import deque
from http import HTTPStatus

import httptools

READ_SIZE = 256 << 10
# The slowest a request body may arrive on average, beyond --http-body-timeout: 64 MiB in a minute.
MIN_BODY_RATE = 1 << 20


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the bounds."""


class Exchange:
    """One request and what the application decided about it; its answer is written when its turn comes."""

    __slots__ = ("method", "path", "headers", "keep_alive", "state", "body", "answer", "head_only", "expect")

    def __init__(self, method: str, path: str, headers: list, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # [(lower-case name, value)], bytes
        self.keep_alive = keep_alive
        self.head_only = method == "HEAD"
        self.state = None  # the application's (http_service.Pending)
        self.body = None  # the application's body sink (http_service.Body), None when the body is discarded
        self.answer: list | None = None  # the encoded answer, once known before the body is read
        self.expect = False  # the client waits for "100 Continue" before it sends its body


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())


class Limits:
    """A connection's bounds, from the server's settings."""

    __slots__ = ("max_head_bytes", "max_headers", "header_timeout", "body_timeout", "keepalive_timeout", "tick")

    def __init__(self, max_head_bytes: int, max_headers: int, header_timeout: float, body_timeout: float,
                 keepalive_timeout: float) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.tick = min(header_timeout, body_timeout, keepalive_timeout)  # the farthest a timer is due ahead


class HttpConnection(asyncio.Protocol):
    """Parses requests, holds them to their bounds, hands each complete one to the application in order and
    writes its answer. The application (``http_service.HttpApp``) has four entry points: ``head`` (the
    request line and headers are in), ``refuse`` (its body went past a bound), ``start`` (its turn has come,
    the body is in; the answer now, or None and ``answered`` later from a thread) and ``dropped`` (the
    connection closed before ``start``)."""

    def __init__(self, app, limits: Limits, connections: set) -> None:
        self.app = app
        self.limits = limits
        self.connections = connections
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.draining = False
        self._queue: deque[Exchange] = deque()  # complete requests waiting for their turn
        self._current: Exchange | None = None  # the request being worked on, until its answer is written
        self._partial: Exchange | None = None  # the request whose head or body is arriving
        self._url = b""
        self._headers: list = []
        self._head_bytes = 0
        self._head_size = 0
        self._head_too_large = False
        self._in_head = True
        self._read_paused = False
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""  # what the deadline is for: "head", "body", "idle", or "" for none
        self._deadline = 0.0
        self._body_last = 0.0

    # -- connection ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.connections.add(self)
        self._arm("head", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self._timer_kind = ""
        if self._timer is not None:
            self._timer.cancel()
        for ex in (self._partial, *self._queue):
            if ex is not None:
                self.app.dropped(ex)
        self._partial = None
        self._queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._next()

    # -- deadlines: one timer per connection, due at most one tick ahead, so that a request only moves a
    # deadline (a new one is never earlier than the timer) and creates no timer of its own
    def _arm(self, kind: str, delay: float) -> None:
        self._timer_kind = kind
        self._deadline = self.loop.time() + delay
        if self._timer is None:
            self._timer = self.loop.call_later(min(delay, self.limits.tick), self._on_timer)

    def _disarm(self) -> None:
        self._timer_kind = ""

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind or self.closed:
            return
        now = self.loop.time()
        deadline = self._deadline
        if kind == "body":  # a body has a deadline per part and one for the whole
            deadline = min(self._body_last + self.limits.body_timeout, self._deadline)
        if now < deadline:
            self._timer = self.loop.call_later(min(deadline - now, self.limits.tick), self._on_timer)
            return
        self._timer_kind = ""
        if kind == "head":
            self._head_timed_out()
        elif kind == "body":
            self._body_timed_out()
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer and close at once: the connection is beyond use (a bad head, a timeout)."""
        body = b'{"error":"' + message.encode() + b'"}'
        self.transport.write(status_line(status) + b"content-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _head_timed_out(self) -> None:
        if not self.transport.is_closing():
            self._refuse(408, "the request head did not arrive in time (--http-header-timeout)")

    def _head_message(self) -> str:
        return (f"the request head is larger than {self.limits.max_head_bytes} bytes or {self.limits.max_headers} "
                "fields (--http-max-header-kb, --http-max-headers)")

    # -- parsing -------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed or self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
            # A head still incomplete after this many bytes is over the bound, whatever one read held beyond it
            # (uvloop reads at most 256 KiB at a time): this catches one header line without end.
            if self._head_bytes > self.limits.max_head_bytes + READ_SIZE:
                self._refuse(431, self._head_message())
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is answered as if it asked for no upgrade; what follows it is not HTTP/1.1.
            for ex in (self._current, *self._queue):
                if ex is not None:
                    ex.keep_alive = False
            self.parser = httptools.HttpRequestParser(self)
            self._read_pause()
            if self._current is None and not self._queue:  # already answered: nothing more to say
                self.transport.close()
        except (httptools.HttpParserError, _HeadTooLarge):  # httptools wraps what a callback raises
            if self._head_too_large:
                self._refuse(431, self._head_message())
            elif not self.transport.is_closing():
                self._refuse(400, "Invalid HTTP request received.")

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_size = 0
        if self._timer_kind != "head":  # a new connection's head timer runs from its opening
            self._arm("head", self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._check_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        if len(self._headers) > self.limits.max_headers:
            self._head_too_large = True
            raise _HeadTooLarge
        self._check_head(len(name) + len(value))

    def _check_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self.limits.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        if self.transport.is_closing():  # the rest of a read after a refusal: not served
            return
        parser = self.parser
        path = httptools.parse_url(self._url).path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        keep_alive = parser.should_keep_alive() and not self.draining
        ex = Exchange(parser.get_method().decode("ascii", "replace"), path, self._headers, keep_alive)
        self._partial = ex
        self.app.head(ex)
        if ex.answer is not None and not ex.keep_alive and self._current is None and not self._queue:
            self._partial = None  # refused before its body (413): answered now, the body is not read
            self._write(ex.answer, True)
            return
        if ex.body is not None and ex.expect and self._current is None and not self._queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if ex.body is not None:
            self._arm("body", self.limits.body_timeout + ex.body.expected / MIN_BODY_RATE)
            self._body_last = self.loop.time()

    def on_body(self, data: bytes) -> None:
        ex = self._partial
        if ex is None or ex.body is None:
            return
        self._body_last = self.loop.time()
        try:
            ex.body.add(data)
        except Exception as exc:  # over the bound: answered in its turn without the rest, then the connection closes
            ex.body = None
            ex.keep_alive = False
            self.app.refuse(ex, exc)
            self._disarm()
            self._partial = None
            self._queue.append(ex)
            if self._current is None:
                self._next()
            else:
                self._read_pause()

    def _body_timed_out(self) -> None:
        ex = self._partial
        if ex is None or ex.body is None or self.transport.is_closing():
            return
        self._partial = None
        self.app.dropped(ex)
        self._refuse(408, f"the request body stalled: {self.limits.body_timeout:g} s without a part "
                          f"(--http-body-timeout), or slower than {MIN_BODY_RATE >> 10} KiB/s")

    def on_message_complete(self) -> None:
        ex = self._partial
        self._partial = None
        self._in_head = True
        if ex is None:
            return
        if ex.body is not None:
            self._disarm()
        self._queue.append(ex)
        if self._current is None:
            self._next()
        elif not self._read_paused:
            self._read_pause()

    # -- answering -----------------------------------------------------------------------------------------
    def _read_pause(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _next(self) -> None:
        """Start the waiting requests in order while the one before each is answered and the client reads; a
        loop, not a recursion, over those answered at once (refusals, health), however many were pipelined."""
        while self._current is None and not self._write_paused and not self.closed:
            if not self._queue:
                if self._read_paused and not self.transport.is_closing():
                    self._read_paused = False
                    self.transport.resume_reading()
                if self._partial is None and not self._timer_kind:
                    self._arm("idle", self.limits.keepalive_timeout)
                return
            ex = self._current = self._queue.popleft()
            data = ex.answer if ex.answer is not None else self.app.start(self, ex)
            if data is None:  # on the threads: answered() comes back with it
                return
            self._current = None
            self._write(data, not ex.keep_alive or self.draining)
            if self.transport.is_closing():
                return

    def answered(self, ex: Exchange, data: list, close: bool) -> None:
        """The answer of ``ex`` (the current request) from the threads, written in one call; on the event loop."""
        if self._current is not ex or self.closed:
            return
        self._current = None
        self._write(data, close or not ex.keep_alive or self.draining)
        if not self.transport.is_closing():
            self._next()

    def _write(self, data: list, close: bool) -> None:
        self.transport.writelines(data)
        if close:
            self.transport.close()

    def shutdown(self) -> None:
        """Stop taking requests: close now when idle, else after the answer being worked on."""
        self.draining = True
        if self._current is None and not self._queue:
            self.transport.close()
