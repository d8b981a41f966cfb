"""Nothing stalls it, nothing takes down what serves: stalled clients, requests cancelled in a batcher queue,
a killed worker, and an honest shutdown report. Real servers on loopback, bounded loops, generous timeouts,
no timed assertions (the figures come from `tensorwire bench resilience`, bench/results/resilience/)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server
from test_lifecycle import _slow_model

from tensorwire.bench.procnet import client_ports, descendants, listening, worker_of
from tensorwire.bench.stall import stalled
from tensorwire.client import InferenceClient, encode_request

X = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.full((1, 16), 2.0, np.float32)}


def _check_answer(client: InferenceClient) -> None:
    out = client.infer("add_sub", X)
    np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), 3.0, np.float32))
    np.testing.assert_array_equal(out["OUTPUT1"], np.full((1, 16), -1.0, np.float32))


@pytest.fixture
def repo(tmp_path):
    return write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent


@pytest.mark.slow
def test_stalled_clients_do_not_starve_the_others(repo, frontend):
    """300 calls that never finish sending their request and 100 streams that never send one: another
    client's health checks and inferences all succeed and answer correctly, while they stay open and after."""
    with start_server(repo, "--grpc-frontend", frontend) as s:
        with stalled(s.address, 300, 100) as (calls, streams), InferenceClient(s.address, timeout=30) as client:
            time.sleep(2.0)
            for _ in range(50):
                assert client.server_live() and client.server_ready()
                _check_answer(client)
            assert calls.ended == 0 and streams.ended == 0  # held, not cut: they cost a sleeping thread each
        with InferenceClient(s.address, timeout=30) as client:
            _check_answer(client)


def test_cancelled_requests_leave_the_batcher_queue_at_once(tmp_path, frontend):
    """Requests queued behind a 5 s batch delay, without deadlines, are cancelled by their clients: they leave
    the queue then, not when the batch forms, so a queue bounded at 4 takes 4 new requests at once."""
    config = ADD_SUB_CONFIG + ("dynamic_batching { max_queue_delay_microseconds: 5000000 "
                               "default_queue_policy { max_queue_size: 4 } }\n")
    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(), config).parent
    request = encode_request("add_sub", X)
    with start_server(repo, "--grpc-frontend", frontend) as s, grpc.insecure_channel(s.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        first = [infer.future(request) for _ in range(4)]
        time.sleep(0.5)
        for f in first:
            f.cancel()
        time.sleep(0.5)
        second = [infer.future(request, timeout=60) for _ in range(4)]
        for f in second:
            f.result()  # would be RESOURCE_EXHAUSTED (queue full) if the cancelled ones were still queued
        stats = grpcclient.InferenceServerClient(s.address).get_inference_statistics("add_sub", as_json=True)
        assert int(stats["model_stats"][0]["inference_count"]) == 4  # the cancelled ones never ran


def _workers(server) -> list[int]:
    port = int(server.address.rsplit(":", 1)[1])
    return [pid for pid in descendants(server.process.pid) if listening(pid, port)]


def _wait(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _channel_per_client(address: str, n: int) -> list[tuple[InferenceClient, int]]:
    """``n`` clients, each on its own connection, with the local port of that connection."""
    port = int(address.rsplit(":", 1)[1])
    out = []
    for _ in range(n):
        before = client_ports(port)
        client = InferenceClient(address, timeout=30, options=[("grpc.use_local_subchannel_pool", 1)])
        _check_answer(client)
        (local,) = client_ports(port) - before
        out.append((client, local))
    return out


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(repo, frontend):
    with start_server(repo, "--grpc-frontend", frontend, "--workers", "2") as s:
        port = int(s.address.rsplit(":", 1)[1])
        _wait(lambda: len(_workers(s)) == 2)
        workers = _workers(s)
        clients = _channel_per_client(s.address, 8)
        on = {local: worker_of(local, port, workers) for _, local in clients}
        victim = on[clients[0][1]]
        survivors = [(c, local) for c, local in clients if on[local] != victim]
        failures: list[BaseException] = []
        stop = threading.Event()

        def keep_calling(client: InferenceClient) -> None:
            while not stop.is_set():
                try:
                    _check_answer(client)
                except BaseException as exc:  # recorded and asserted below
                    failures.append(exc)

        threads = [threading.Thread(target=keep_calling, args=(c,)) for c, _ in survivors]
        for t in threads:
            t.start()
        time.sleep(0.3)
        import os

        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_workers(s)) == 2 and victim not in _workers(s))
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert failures == []  # connections to the surviving worker never noticed
        with InferenceClient(s.address, timeout=30) as fresh:
            _check_answer(fresh)
    assert "exited with -9" in s.log() and "replacement 1" in s.log()


def test_shutdown_report_says_what_the_grace_cut(tmp_path, frontend):
    repo = tmp_path / "models"
    write_model(repo, "slow", _slow_model(), "max_batch_size: 0\n")
    x = np.ones((2048, 512), np.float32)
    with start_server(repo, "--grpc-frontend", frontend, "--shutdown-grace", "0.2", "--handler-threads", "8") as s:
        request = encode_request("slow", {"X": x})
        with grpc.insecure_channel(s.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            infer(request, timeout=120)  # warm up
            pending = [infer.future(request, timeout=120) for _ in range(4)]
            time.sleep(0.3)  # one runs, three wait for the only instance; none can finish in 0.2 s
            s.process.send_signal(signal.SIGTERM)
            assert s.process.wait(timeout=60) == 0
            errors = [f.exception(timeout=60) for f in pending]
    assert any(e is not None for e in errors)
    last = s.log().strip().splitlines()[-1]
    assert "were cut by the 0.2 s grace" in last and "stopped cleanly" not in last, last
    # the three waiting for the instance count, also where they wait parked (the core loop)
    assert "of 4 request(s) in flight at the stop" in last, last


def _idle_streams(address: str, connections: int, streams: int, release: threading.Event) -> list:
    """``streams`` ModelStreamInfer calls spread over ``connections`` connections, none sending a request
    until ``release`` is set."""
    def nothing_until_released():
        release.wait()
        return
        yield

    channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    calls = []
    for i in range(streams):
        open_stream = channels[i % connections].stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        calls.append(open_stream(nothing_until_released()))
    return channels + calls


def _admission_full(address: str) -> bool:
    try:
        InferenceClient(address).infer("add_sub", X)
    except Exception as exc:  # the client raises our ResourceExhausted error with the server's message
        return "Concurrent RPC limit exceeded" in str(exc)
    return False


@pytest.mark.slow
def test_health_answers_while_admission_is_full(repo):
    """1,100 idle streams take every admitted RPC (--max-concurrent-rpcs 1024): inferences are refused, but
    another client's ServerLive, ServerReady, ModelReady and grpc.health.v1 Check and Watch still answer,
    so a liveness probe does not restart a server that is merely busy; once the streams close, inferences
    succeed again."""
    from clients import wait_until
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    release = threading.Event()
    with start_server(repo) as s:
        held = _idle_streams(s.address, 8, 1100, release)
        try:
            wait_until(lambda: _admission_full(s.address), "the idle streams fill the admission bound")
            c = grpcclient.InferenceServerClient(s.address)
            assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("add_sub")
            with grpc.insecure_channel(s.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                serving = health_pb2.HealthCheckResponse.SERVING
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == serving
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                assert next(watch).status == serving
                watch.cancel()
        finally:
            release.set()
            for item in held:
                (item.cancel if hasattr(item, "cancel") else item.close)()
        wait_until(lambda: not _admission_full(s.address), "inferences are admitted again")
        _check_answer(InferenceClient(s.address))
