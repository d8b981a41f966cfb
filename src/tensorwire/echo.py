"""A bare grpcio server that answers ModelInfer with a fixed number of bytes: the latency floor.

It receives the request as bytes (no parsing) and returns a preallocated payload of the size our
server's response would have, so the difference between the two is what tensorwire itself costs.
Run as ``python -m tensorwire.echo --response-bytes N --port 0 --port-file F``.

It lives beside the launcher (:mod:`tensorwire.launcher`) rather than in bench/ because the demo
shows this floor: "the server adds X ms" means little to a new user until it stands next to what a
gRPC round trip of the same bytes costs with no server logic at all. Keeping it in bench/ would make
the demo import the benchmarks again.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

METHOD_SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def make_server(response_bytes: int, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """(server, bound port) of an echo server that answers every ModelInfer, and every request on a
    ModelStreamInfer stream, with ``response_bytes`` bytes."""
    payload = bytes(response_bytes)

    def infer(request: bytes, context) -> bytes:
        return payload

    def stream_infer(requests, context):
        for _ in requests:
            yield payload

    handler = grpc.method_handlers_generic_handler(METHOD_SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream_infer),  # one answer per request
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT (the launcher stops it with SIGTERM)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--response-bytes", type=int, required=True, help="size of every answer")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--threads", type=int, default=8, help="handler threads (default 8)")
    args = p.parse_args(argv)
    server, port = make_server(args.response_bytes, args.host, args.port, args.threads)
    server.start()
    if args.port_file:
        args.port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
