"""The C-core serving loop's own rules: the cygrpc check and its fallback, and the pollers' bound on requests
worked on at once (a request beyond it is parked, held by no thread, and taken by the next poller that is
done). The protocol itself is checked on both front ends by the client, security and resilience tests."""

from __future__ import annotations

import logging
import signal
import threading
from types import SimpleNamespace

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server

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


def test_a_health_watch_sees_not_serving_and_ends_instead_of_holding_the_drain(tmp_path):
    """SIGTERM with a long grace: the Watch stream is told NOT_SERVING and ends with OK, so the server stops
    without waiting out the grace for it (grpcio's server keeps such a stream until the grace ends)."""
    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent
    with (start_server(repo, "--grpc-frontend", "core", "--shutdown-grace", "600") as s,
          grpc.insecure_channel(s.address) as channel):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=600)
        seen = [next(watch).status]
        s.process.send_signal(signal.SIGTERM)
        seen += [m.status for m in watch]  # ends without an error: the stream closed with OK
        assert s.process.wait(timeout=120) == 0
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    assert "stopped cleanly" in s.log().strip().splitlines()[-1]


def test_health_calls_have_a_bound_of_their_own(tmp_path):
    """On the core loop health calls are exempt from --max-concurrent-rpcs but bounded apart, as generously:
    with 4 Watch streams held (bound 4), a fifth health call is RESOURCE_EXHAUSTED while inference still runs;
    once the streams end, health answers again (a Watch never outlives its call's count)."""
    from clients import wait_until

    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent
    with (start_server(repo, "--grpc-frontend", "core", "--max-concurrent-rpcs", "4") as s,
          grpc.insecure_channel(s.address) as channel):
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(4)]
        assert [next(w).status for w in watches] == [health_pb2.HealthCheckResponse.SERVING] * 4
        try:
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            raise AssertionError("a fifth health call was admitted past the bound")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ServerMetadata")
        assert metadata(b"", timeout=30)  # not a health call: its own admission still has room
        for w in watches:
            w.cancel()

        def answers() -> bool:
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == 1
            except grpc.RpcError:
                return False

        wait_until(answers, "health answers once the Watch streams ended")
