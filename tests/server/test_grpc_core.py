"""The C-core serving loop's own rules: the cygrpc check and its fallback, and the pollers' bound on requests
worked on at once (a request beyond it is parked, held by no thread, and taken by the next poller that is
done). The protocol itself is checked on both front ends by the client, security and resilience tests."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import onnx
import pytest
from clients import wait_for_pending, wait_until
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from onnx import TensorProto, helper, numpy_helper
from serving import start_server

from tensorwire.server import app
from tensorwire.server.grpc_core import CoreFrontend, Gate, Pollers, missing_pieces
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


def test_a_models_gate_parks_its_requests_and_lets_other_models_run():
    """A job of a model whose gate is full waits parked (the caller returns at once) while a job of another
    model runs; the poller that finishes the model's job takes it next."""
    queue = cygrpc.CompletionQueue()
    pollers = Pollers(queue, lambda _event: None, limit=8)
    pollers.start()
    busy, other = Gate(1), Gate(1)
    release, ran, order = threading.Event(), threading.Event(), []

    def first() -> None:
        order.append(("first", threading.current_thread().name))
        release.wait(60)

    worker = threading.Thread(target=pollers.work, args=(first, busy), name="worker")
    worker.start()
    while not order:
        release.wait(0.01)
    pollers.work(lambda: (order.append(("second", threading.current_thread().name)), ran.set()), busy)
    assert not ran.is_set() and list(busy.parked) and busy.working == 1  # parked: this thread returned
    pollers.work(lambda: order.append(("other model", threading.current_thread().name)), other)
    assert order[-1] == ("other model", threading.current_thread().name)  # it ran here, at once
    release.set()
    assert ran.wait(60)
    worker.join(60)
    assert order == [("first", "worker"), ("other model", "MainThread"), ("second", "worker")]
    assert busy.working == 0 and other.working == 0 and pollers.idle(60)
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


def _matmul_chain(width: int, layers: int, shared: bool = False) -> onnx.ModelProto:
    """A model slow enough (about 10 ms on one thread) for requests to queue behind its one instance; with
    ``shared`` every layer multiplies by one weight, so a long chain stays a small file."""
    rng = np.random.default_rng(0)
    names = ["INPUT"] + [f"h{i}" for i in range(1, layers)] + ["OUTPUT"]
    weights = [numpy_helper.from_array((rng.standard_normal((width, width)) / width).astype(np.float32), f"w{i}")
               for i in range(1 if shared else layers)]
    nodes = [helper.make_node("MatMul", [names[i], f"w{0 if shared else i}"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", width])],
                              initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_requests_waiting_for_a_busy_instance_hold_no_poller_and_spare_pollers_rest(tmp_path):
    """64 ModelInfer calls at once on a model with one instance, served in this process: one is worked on
    (two on a one-CPU host: the next waits on the instance), the rest wait parked, so the pollers stay at a few
    threads (grpcio's server would hold 64); every answer is the model's and the parked time counts as queue
    time. Once the burst is over one poller polls and the others rest, a later call is answered, and the stop
    ends every poller."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as tc

    repo = write_model(tmp_path / "models", "chain", _matmul_chain(1024, 10),
                       "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n").parent
    server = app.TensorwireServer(ServerSettings(model_repository=repo, grpc_port=0, allow_http=False,
                                                 intra_op_threads=1)).start()
    pollers = server.grpc.pollers
    try:
        with tc.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            inp = tc.InferInput("INPUT", [1, 1024], "FP32")
            inp.set_data_from_numpy(np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32))
            expected = client.infer("chain", [inp]).as_numpy("OUTPUT")
            peak, stop = [0], threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], pollers.threads)
                    stop.wait(0.001)

            watcher = threading.Thread(target=watch)
            watcher.start()
            with ThreadPoolExecutor(64) as pool:
                answers = list(pool.map(lambda _: client.infer("chain", [inp], client_timeout=120).as_numpy("OUTPUT"),
                                        range(64)))
            stop.set()
            watcher.join(60)
            stats = client.get_inference_statistics("chain").model_stats[0]
            assert pollers.rest == (len(os.sched_getaffinity(0)) > 1) != server.grpc.single_cpu
            if pollers.rest:
                wait_until(lambda: pollers.threads - len(pollers._resting) == 1, "one poller polling, the rest resting")
            assert np.array_equal(client.infer("chain", [inp]).as_numpy("OUTPUT"), expected)
    finally:
        server.stop()
    assert all(np.array_equal(a, expected) for a in answers)
    assert stats.inference_count == 65 and stats.execution_count == 65
    assert stats.inference_stats.queue.ns > 0  # they did wait, and the parked time is counted
    assert peak[0] <= 4, f"{peak[0]} pollers with 64 requests waiting (at most 2 working, 1 polling, 1 spare)"
    pollers.join(60)
    assert pollers.threads == 0


def _add_sub_inputs(value: float) -> list:
    import tritonclient.grpc as tc

    inputs = [tc.InferInput("INPUT0", [1, 16], "FP32"), tc.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(np.full((1, 16), value, np.float32))
    inputs[1].set_data_from_numpy(np.ones((1, 16), np.float32))
    return inputs


def _stream_one(address: str, value: float) -> np.ndarray:
    """One request on a ModelStreamInfer stream of its own; its OUTPUT0."""
    import queue

    import tritonclient.grpc as tc

    answers: queue.Queue = queue.Queue()
    with tc.InferenceServerClient(address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("add_sub", _add_sub_inputs(value))
        result, error = answers.get(timeout=120)
        client.stop_stream()
    assert error is None, error
    return result.as_numpy("OUTPUT0")


def test_requests_in_a_batchers_queue_hold_no_poller(tmp_path):
    """With one poller slot (--handler-threads 1) and a batcher that waits up to 10 s (the bound) for a batch of
    8: a call that times out in the queue leaves it when its call ends (counted failed at once, not when a batch
    forms), and 6 ModelInfer calls and 2 ModelStreamInfer streams all join one batch, because none holds the slot
    while it waits (a poller waiting in the queue would hold it, and the 8 would run one by one, 10 s apart); each
    answer is its own request's, and the server goes on serving."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    config = ADD_SUB_CONFIG + ("dynamic_batching { max_queue_delay_microseconds: 10000000 "
                               "preferred_batch_size: [ 8 ] }\n")
    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), config).parent
    with start_server(repo, "--handler-threads=1") as server, tc.InferenceServerClient(server.address) as client:
        def failures() -> int:
            return client.get_inference_statistics("add_sub").model_stats[0].inference_stats.fail.count

        try:
            client.infer("add_sub", _add_sub_inputs(0), client_timeout=1)
            raise AssertionError("a request alone in the queue was answered before the batch delay")
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.DEADLINE_EXCEEDED", exc
        wait_until(lambda: failures() == 1, "the timed-out request out of the queue")
        with ThreadPoolExecutor(8) as pool:
            unary = [pool.submit(lambda v=v: client.infer("add_sub", _add_sub_inputs(v), client_timeout=120)
                                 .as_numpy("OUTPUT0")) for v in range(1, 7)]
            streams = [pool.submit(_stream_one, server.address, v) for v in (7, 8)]
            answers = [f.result(timeout=180) for f in unary + streams]
        stats = client.get_inference_statistics("add_sub").model_stats[0]
        assert client.is_server_ready()
    for value, answer in zip(range(1, 9), answers):
        np.testing.assert_array_equal(answer, np.full((1, 16), value + 1, np.float32))
    assert (stats.inference_count, stats.execution_count, stats.inference_stats.fail.count) == (8, 1, 1)


def test_a_stop_answers_what_waits_in_a_batchers_queue(tmp_path):
    """Two ModelInfer calls and a stream request wait in a batcher's queue (10 s delay) when SIGTERM comes with a
    0.2 s grace: the grace cuts them, each call gets an error, none hangs, and the process exits 0 saying so (a
    request answered from the batcher's thread after the completion queue closed would abort it)."""
    import queue

    import tritonclient.grpc as tc

    config = ADD_SUB_CONFIG + "dynamic_batching { max_queue_delay_microseconds: 10000000 }\n"
    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), config).parent
    with start_server(repo, "--shutdown-grace=0.2") as server, tc.InferenceServerClient(server.address) as client:
        answers: queue.Queue = queue.Queue()
        for value in (1, 2):
            client.async_infer("add_sub", _add_sub_inputs(value), lambda result, error: answers.put(error),
                               client_timeout=120)
        with tc.InferenceServerClient(server.address) as streaming:
            streaming.start_stream(callback=lambda result, error: answers.put(error))
            streaming.async_stream_infer("add_sub", _add_sub_inputs(3))
            wait_for_pending(server, "add_sub", 3)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=60) == 0
            errors = [answers.get(timeout=60) for _ in range(3)]
    assert all(error is not None for error in errors), errors
    last = server.log().strip().splitlines()[-1]
    assert "were cut by the 0.2 s grace" in last, last


@pytest.mark.parametrize("via", ["unary", "stream"])
def test_an_unloaded_model_is_freed_while_its_clients_stay(via, tmp_path):
    """After a request (a unary call, or one on a stream that stays open) the model is unloaded: nothing keeps
    its version (and the ONNX Runtime sessions behind it), neither the repository's entry nor the open stream."""
    import gc
    import queue
    import weakref

    import tritonclient.grpc as tc

    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent
    server = app.TensorwireServer(ServerSettings(model_repository=repo, grpc_port=0, allow_http=False,
                                                 model_control_mode="explicit", load_models=["add_sub"])).start()
    try:
        model = weakref.ref(server.repository.get("add_sub"))
        answers: queue.Queue = queue.Queue()
        with tc.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            if via == "stream":
                client.start_stream(callback=lambda result, error: answers.put((result, error)))
                client.async_stream_infer("add_sub", _add_sub_inputs(1))
                result, error = answers.get(timeout=60)
                assert error is None, error
            else:
                result = client.infer("add_sub", _add_sub_inputs(1))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2, np.float32))
            client.unload_model("add_sub")

            def freed() -> bool:
                gc.collect()
                return model() is None

            wait_until(freed, "the unloaded model freed")
            if via == "stream":
                client.stop_stream()
    finally:
        server.stop()


def test_a_stop_ends_once_a_parked_request_that_fails_before_its_model_is_answered(tmp_path):
    """Three requests wait parked behind a busy instance when the stop begins (60 s grace); the last one's body
    does not decode, so it fails before it reaches its model. The stop ends once it is answered
    (INVALID_ARGUMENT), not when the grace runs out, and its report counts all four, none cut."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2

    repo = write_model(tmp_path / "models", "chain", _matmul_chain(2048, 600, shared=True),  # ~1 s a request
                       "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n").parent
    server = app.TensorwireServer(ServerSettings(model_repository=repo, grpc_port=0, allow_http=False,
                                                 intra_op_threads=1)).start()
    in_flight, address = server.plane.in_flight, f"127.0.0.1:{server.port}"
    # Its model's name reads (so it is parked behind its model), its inputs do not: a tensor cut short.
    bad = service_pb2.ModelInferRequest(model_name="chain").SerializeToString() + b"\x2a\x03\xff\xff\xff"
    inp = tc.InferInput("INPUT", [8, 2048], "FP32")
    inp.set_data_from_numpy(np.ones((8, 2048), np.float32))
    with tc.InferenceServerClient(address) as client, grpc.insecure_channel(address) as channel, \
            ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(client.infer, "chain", [inp], client_timeout=120) for _ in range(3)]
        wait_until(lambda: in_flight.waiting >= 3 - (1 + server.grpc.single_cpu), "requests parked")
        refused = pool.submit(channel.unary_unary("/inference.GRPCInferenceService/ModelInfer"), bad, timeout=120)
        wait_until(lambda: in_flight.waiting >= 4 - (1 + server.grpc.single_cpu), "the bad request parked")
        began = time.monotonic()
        report = server.stop(grace=60)
        took = time.monotonic() - began
        assert all(f.result(60).as_numpy("OUTPUT").shape == (8, 2048) for f in busy)
        with pytest.raises(grpc.RpcError) as err:
            refused.result(60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (report.in_flight, report.cut) == (4, 0)
    assert took < 30, f"the stop took {took:.1f} s of its 60 s grace"
