"""The C-core serving loop's own rules: the cygrpc check and its fallback, and the pollers' bound on requests
worked on at once (a request beyond it is parked, held by no thread, and taken by the next poller that is
done). The protocol itself is checked on both front ends by the client, security and resilience tests."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

from grpc._cython import cygrpc

from tensorwire.server import app
from tensorwire.server.grpc_core import CoreFrontend, Pollers, missing_pieces
from tensorwire.server.grpc_service import GrpcioFrontend
from tensorwire.server.settings import ServerSettings


def test_this_grpcio_has_every_piece_the_loop_uses():
    assert missing_pieces() == []


def test_core_is_taken_when_asked_and_grpcio_when_a_piece_is_missing(monkeypatch, caplog):
    plane = SimpleNamespace(settings=ServerSettings(grpc_frontend="core"))
    assert isinstance(app.grpc_frontend(plane), CoreFrontend)
    assert isinstance(app.grpc_frontend(SimpleNamespace(settings=ServerSettings(grpc_frontend="grpcio"))),
                      GrpcioFrontend)
    monkeypatch.setattr(app, "missing_pieces", lambda: ["cygrpc.Server.request_call"])
    with caplog.at_level(logging.WARNING, logger="tensorwire.server"):
        assert isinstance(app.grpc_frontend(plane), GrpcioFrontend)
    assert "lacks cygrpc.Server.request_call; serving with grpcio's own server instead" in caplog.text


def test_a_job_beyond_the_bound_is_parked_and_taken_by_the_poller_that_is_done():
    queue = cygrpc.CompletionQueue()
    pollers = Pollers(queue, lambda _event: None, limit=1)
    pollers.start()
    release, ran, order = threading.Event(), threading.Event(), []

    def first() -> None:
        order.append(("first", threading.current_thread().name))
        release.wait(60)

    def second() -> None:
        order.append(("second", threading.current_thread().name))
        ran.set()

    worker = threading.Thread(target=pollers.work, args=(first,), name="worker")
    worker.start()
    while not order:
        release.wait(0.01)
    assert pollers.threads == 2  # the worker took the only poller's place: another one was started
    pollers.work(second)  # the bound is full: parked, this thread returns at once
    assert order == [("first", "worker")] and not ran.is_set()
    release.set()
    assert ran.wait(60)
    worker.join(60)
    assert order == [("first", "worker"), ("second", "worker")]
    assert pollers.idle(60)
    queue.shutdown()
    pollers.join(60)
    assert pollers.threads == 0
