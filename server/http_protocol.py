"""uvicorn's httptools connection, with the bounds a hostile client needs and uvicorn does not set.

httptools (llhttp) parses a request head of any size and uvicorn waits for one forever, so a connection
that sends headers byte by byte (slowloris), or without end, would hold a socket and grow memory. This
protocol counts the head's bytes (``--http-max-header-kb``) and fields (``--http-max-headers``), answering
431 past either, and closes a connection whose head has not arrived within ``--http-header-timeout``
(from its first byte, or from its opening for a new connection). Body timeouts are the application's
(``http_service.py``): it reads the body.
"""

from __future__ import annotations

import asyncio

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tensorwire.server.settings import ServerSettings

READ_SIZE = 256 << 10


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the bounds."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection with bounded request heads."""

    max_head_bytes = 64 << 10
    max_headers = 100
    header_timeout = 10.0

    @classmethod
    def configured(cls, s: ServerSettings) -> type[BoundedHttpToolsProtocol]:
        """The class with the bounds of ``s`` (uvicorn builds one instance per connection from a class)."""
        return type(cls.__name__, (cls,), {"max_head_bytes": s.http_max_header_kb << 10,
                                           "max_headers": s.http_max_headers,
                                           "header_timeout": s.http_header_timeout})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._header_count = 0
        self._head_size = 0
        self._head_too_large = False
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "the request head did not arrive in time (--http-header-timeout)")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _refuse(self, status: int, message: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(status, b"Bad Request")
        body = b'{"error":"' + message.encode() + b'"}'
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            # A head still incomplete after this many bytes is over the bound, whatever one read held beyond it
            # (uvloop reads at most 256 KiB at a time): this catches one header line without end.
            if self._head_bytes > self.max_head_bytes + READ_SIZE:
                self._refuse(431, self._head_message())
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.send_400_response("Protocol upgrades are not supported.")
        except (httptools.HttpParserError, _HeadTooLarge):
            if self._head_too_large:
                self._refuse(431, self._head_message())
            else:
                self.send_400_response("Invalid HTTP request received.")

    def _head_message(self) -> str:
        return (f"the request head is larger than {self.max_head_bytes} bytes or {self.max_headers} fields "
                "(--http-max-header-kb, --http-max-headers)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._head_size = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._check_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)
        self._check_head(len(name) + len(value))

    def _check_head(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._head_size = 0
        self._disarm_head_timer()
        super().on_headers_complete()
