"""A real tensorwire server in a subprocess on an ephemeral loopback port (used by fixtures and tests)."""

from __future__ import annotations

from pathlib import Path

from tensorwire.launcher import ServerProcess, tensorwire_server

__all__ = ["FRONTENDS", "ServerProcess", "start_server"]

# The gRPC front ends (--grpc-frontend): the protocol, security and resilience tests run on each.
FRONTENDS = ("core", "grpcio")


def start_server(repository: Path, *extra_args: str, env: dict | None = None, check_exit: bool = True, **kw):
    """`tensorwire serve` on 127.0.0.1:<free port>; on exit it is SIGTERMed and must exit 0. ``kw``: the
    launcher's ``tls`` and ``headers``, for servers that want them."""
    return tensorwire_server(repository, *extra_args, env=env, check_exit=check_exit, **kw)
