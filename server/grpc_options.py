"""What both gRPC front ends set up the same way: channel arguments and the listening port.

The flags carry Triton's names and units (``--grpc-keepalive-time`` and the rest; docs/resilience.md);
this module turns them into grpc core's channel arguments, which grpcio's server and the C-core serving
loop both take, and binds the port with the TLS credentials the settings ask for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from tensorwire.server.security import loopback_only, server_credentials
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.server")


def channel_options(s: ServerSettings) -> list[tuple[str, int]]:
    """grpc core channel arguments for the server's message, connection and keepalive settings."""
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", s.grpc_keepalive_time),
        ("grpc.keepalive_timeout_ms", s.grpc_keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", int(s.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", s.grpc_http2_max_pings_without_data),
        ("grpc.http2.min_ping_interval_without_data_ms", s.grpc_http2_min_recv_ping_interval_without_data),
        ("grpc.http2.max_ping_strikes", s.grpc_http2_max_ping_strikes),
    ]
    for key, value in (("grpc.max_connection_age_ms", s.grpc_max_connection_age),
                       ("grpc.max_connection_age_grace_ms", s.grpc_max_connection_age_grace),
                       ("grpc.max_connection_idle_ms", s.grpc_max_connection_idle)):
        if value > 0:
            options.append((key, value))
    return options


AddPort = Callable[[str, "grpc.ServerCredentials | None"], int]  # (address, credentials or None) -> bound port


def listen(s: ServerSettings, add_port: AddPort) -> int:
    """Bind ``--host:--grpc-port`` through the front end's ``add_port`` (plaintext, TLS or mutual TLS as the
    settings say); the bound port, or OSError. Warns when plaintext model control is reachable off-host."""
    address = f"{s.host}:{s.grpc_port}"
    port = add_port(address, server_credentials(s) if s.tls else None)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    if not s.tls and not loopback_only(s.host) and s.model_control_mode != "none":
        log.warning("plaintext gRPC on %s is reachable beyond loopback with --model-control-mode %s: anyone "
                    "who can reach port %d can load and unload models (docs/security.md)",
                    s.host, s.model_control_mode, port)
    log.info("listening on %s:%d (%s)", s.host, port,
             "mutual TLS" if s.grpc_use_ssl_mutual else "TLS" if s.tls else "plaintext")
    return port
