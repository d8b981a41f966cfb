"""Shared fixtures: a real tensorwire server in a subprocess on an ephemeral loopback port.

Test modules import helpers as top-level modules (``from serving import start_server``,
``from models import ...``): tests/ has no __init__.py, so pytest puts tests/ itself on sys.path and
the tests always exercise the installed package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from models import build_test_repository
from serving import FRONTENDS, ServerProcess, start_server

__all__ = ["ServerProcess", "start_server"]


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("serve") / "models")


@pytest.fixture(scope="session", params=FRONTENDS)
def frontend(request) -> str:
    """A gRPC front end (--grpc-frontend): a test that takes it runs once on each."""
    return request.param


@pytest.fixture(scope="session")
def server(test_repository) -> Iterator[ServerProcess]:
    with start_server(test_repository) as s:
        yield s


@pytest.fixture(scope="session")
def triton(server):
    """NVIDIA's tritonclient, unmodified, connected to the shared server."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.address)
    yield client
    client.close()
