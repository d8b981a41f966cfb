"""Clients that start calls and then stall: what a hostile or merely unlucky client does to a server.

``HalfSentCalls`` opens raw HTTP/2 connections (the ``h2`` library) and starts ModelInfer calls whose
gRPC message announces more bytes than it sends, then waits; a reader thread per connection keeps the
connection alive (it acknowledges settings and answers pings, as a stalled client's HTTP/2 stack does).
``IdleStreams`` opens ModelStreamInfer streams with stock grpcio and never sends a request. Both count
calls the server ended (``ended``), so a test can see when a server cut them, and both close on exit.
``TcpConnections`` opens plain TCP connections to the metrics port that send part of a request (or
nothing) and stall, to be closed all at once.
Loopback only: the benchmarks and tests point them at a server they started.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
from collections.abc import Iterator

import grpc

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
# A metrics request whose head never ends (no blank line): the server waits for the rest of it.
HALF_SENT_METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"


class _Connection:
    """One HTTP/2 connection carrying ``calls`` half-sent ModelInfer calls."""

    def __init__(self, address: str, calls: int, announced: int, sent: int) -> None:
        import h2.config
        import h2.connection

        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.settimeout(None)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.lock = threading.Lock()
        self.ended = 0
        self.h2.initiate_connection()
        for _ in range(calls):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", INFER_PATH),
                                       (":authority", address), ("content-type", "application/grpc"),
                                       ("te", "trailers")])
            self.h2.send_data(sid, b"\x00" + struct.pack(">I", announced) + b"\x00" * sent)
        self.sock.sendall(self.h2.data_to_send())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        import h2.events

        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                events = self.h2.receive_data(data)
                self.ended += sum(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events)
                out = self.h2.data_to_send()
            if out:
                with contextlib.suppress(OSError):
                    self.sock.sendall(out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.reader.join(timeout=10)


class HalfSentCalls:
    """``calls`` ModelInfer calls, ``per_connection`` to a connection, each stalled after ``sent`` of the
    ``announced`` message bytes (all of them within HTTP/2's initial 64 KiB connection window)."""

    def __init__(self, address: str, calls: int, per_connection: int = 100, announced: int = 1 << 20,
                 sent: int = 100) -> None:
        self.connections: list[_Connection] = []
        left = calls
        while left > 0:
            n = min(per_connection, left)
            self.connections.append(_Connection(address, n, announced, sent))
            left -= n

    @property
    def ended(self) -> int:
        return sum(c.ended for c in self.connections)

    def close(self) -> None:
        for c in self.connections:
            c.close()


class IdleStreams:
    """``streams`` ModelStreamInfer calls over ``channels`` grpcio channels that never send a request."""

    def __init__(self, address: str, streams: int, channels: int = 4) -> None:
        self._stop = threading.Event()
        self.channels = [grpc.insecure_channel(address) for _ in range(channels)]
        self.calls = []
        for i in range(streams):
            stream = self.channels[i % channels].stream_stream(STREAM_PATH)
            self.calls.append(stream(self._requests()))

    def _requests(self) -> Iterator[bytes]:
        self._stop.wait()
        return
        yield b""  # a generator that ends without sending anything

    @property
    def ended(self) -> int:
        return sum(1 for c in self.calls if c.done())

    def close(self) -> None:
        self._stop.set()
        for c in self.calls:
            c.cancel()
        for ch in self.channels:
            ch.close()


@contextlib.contextmanager
def stalled(address: str, half_sent: int, idle_streams: int) -> Iterator[tuple[HalfSentCalls, IdleStreams]]:
    """Both kinds at once, closed on exit."""
    calls = HalfSentCalls(address, half_sent) if half_sent else HalfSentCalls(address, 0)
    streams = IdleStreams(address, idle_streams)
    try:
        yield calls, streams
    finally:
        calls.close()
        streams.close()


class TcpConnections:
    """``count`` TCP connections to ``host:port``, each having sent ``send`` (nothing by default), then
    stalled. ``failed`` counts those the server refused or reset before ``send`` went out (they are closed
    at once); :meth:`close` closes the rest together, as a client that gives up on all of them does."""

    def __init__(self, port: int, count: int, send: bytes = b"", host: str = "127.0.0.1") -> None:
        self.sockets: list[socket.socket] = []
        self.failed = 0
        for _ in range(count):
            sock = None
            try:
                sock = socket.create_connection((host, port), timeout=30)
                sock.settimeout(None)  # blocking: a socket with a timeout would wait in server_closed's peek
                if send:
                    sock.sendall(send)
                self.sockets.append(sock)
            except OSError:
                self.failed += 1
                if sock is not None:
                    sock.close()

    def server_closed(self) -> int:
        """How many of the open connections the server has closed or reset (read without waiting)."""
        closed = 0
        for sock in self.sockets:
            try:
                closed += sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files towards ``needed`` (never past the hard limit) and
    return the soft limit now in force; children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
