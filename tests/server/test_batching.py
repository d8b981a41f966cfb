"""Dynamic batching, model instances and worker processes, against real servers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from clients import LIVE_METRICS, wait_for_pending
from models import add_sub_model, cast_model, write_model
from serving import start_server
from tritonclient.utils import InferenceServerException

from tensorwire.server.affinity import usable_cpus

BATCHED_ADD_SUB = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 50000 preferred_batch_size: [ 8 ] }
"""

BATCHED_CAST = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 50000 }
"""

EAGER = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 5000000 }
optimization { eager_batching: true }
"""

SLOW_QUEUE = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 2000000 default_queue_policy { max_queue_size: 2 } }
"""


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching") / "models"
    write_model(repo, "add_sub", add_sub_model(), BATCHED_ADD_SUB)
    write_model(repo, "cast", cast_model(), BATCHED_CAST)
    write_model(repo, "slow_queue", add_sub_model(), SLOW_QUEUE)
    write_model(repo, "eager", add_sub_model(), EAGER)
    with start_server(repo, *LIVE_METRICS) as s:
        yield s


def _add_sub(client, a: np.ndarray, b: np.ndarray, **kw):
    ins = [grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
           grpcclient.InferInput("INPUT1", list(b.shape), "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    return client.infer(kw.pop("model", "add_sub"), ins, **kw)


def _stats(client, model: str) -> dict:
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def test_batched_results_equal_unbatched_request_by_request(batching_server):
    rng = np.random.default_rng(1)
    cases = [(rng.standard_normal((n, 16)).astype(np.float32), rng.standard_normal((n, 16)).astype(np.float32))
             for n in [1, 2, 3, 1, 2, 1, 1, 3, 2, 1, 1, 2, 1, 3, 1, 1] * 2]
    clients = [grpcclient.InferenceServerClient(batching_server.address) for _ in range(16)]
    before = _stats(clients[0], "add_sub")

    def call(i: int):
        a, b = cases[i]
        r = _add_sub(clients[i % len(clients)], a, b, request_id=str(i))
        return i, r.get_response().id, r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(len(cases))))
    for i, rid, out0, out1 in results:
        a, b = cases[i]
        assert rid == str(i)
        np.testing.assert_array_equal(out0, a + b)  # exact: same kernels on the same values
        np.testing.assert_array_equal(out1, a - b)
    after = _stats(clients[0], "add_sub")
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == sum(a.shape[0] for a, _ in cases)
    assert executions < len(cases), "no two requests were batched together"
    assert any(int(b["batch_size"]) > 3 for b in after["batch_stats"])
    assert int(after["inference_stats"]["queue"]["ns"]) > 0


def test_requests_with_other_shapes_wait_for_their_own_batch(batching_server):
    rng = np.random.default_rng(2)
    lengths = [5, 7, 5, 7, 9, 5, 7, 9] * 2

    def call(i: int):
        c = grpcclient.InferenceServerClient(batching_server.address)
        ids = rng.integers(0, 1000, (1, lengths[i]), dtype=np.int64)
        mask = np.ones((1, lengths[i]), np.float32)
        ins = [grpcclient.InferInput("ids", list(ids.shape), "INT64"),
               grpcclient.InferInput("mask", list(mask.shape), "FP32")]
        ins[0].set_data_from_numpy(ids)
        ins[1].set_data_from_numpy(mask)
        r = c.infer("cast", ins)
        return ids, r.as_numpy("next_ids"), r.as_numpy("scaled")

    with ThreadPoolExecutor(16) as pool:
        for ids, next_ids, scaled in pool.map(call, range(len(lengths))):
            np.testing.assert_array_equal(next_ids, ids + 1)
            np.testing.assert_array_equal(scaled, ids.astype(np.float32))


def test_bad_request_fails_alone(batching_server):
    rng = np.random.default_rng(3)
    good = [(rng.standard_normal((1, 16)).astype(np.float32),) * 2 for _ in range(12)]

    def call(i: int):
        c = grpcclient.InferenceServerClient(batching_server.address)
        if i == 5:
            bad = np.zeros((1, 15), np.float32)
            try:
                _add_sub(c, bad, bad)
            except InferenceServerException as exc:
                return "bad", exc
            return "bad", None
        a, b = good[i]
        return "good", (a, _add_sub(c, a, b).as_numpy("OUTPUT0"))

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    for kind, value in results:
        if kind == "bad":
            assert value is not None and value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "dimension 1 is 15" in value.message()
        else:
            a, out = value
            np.testing.assert_array_equal(out, 2 * a)


def test_deadline_expiring_in_queue(batching_server):
    """slow_queue waits up to 2 s to fill a batch; a 0.3 s deadline expires first and is never run."""
    c = grpcclient.InferenceServerClient(batching_server.address)
    before = int(_stats(c, "slow_queue").get("execution_count", 0))
    a = np.ones((1, 16), np.float32)
    with pytest.raises(InferenceServerException) as err:
        _add_sub(c, a, a, model="slow_queue", client_timeout=0.3)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # a later request waits out the delay behind it: by its answer the expired one was dropped, not run
    np.testing.assert_array_equal(_add_sub(c, a, a, model="slow_queue").as_numpy("OUTPUT0"), 2 * a)
    assert int(_stats(c, "slow_queue").get("execution_count", 0)) == before + 1


def test_full_queue_is_resource_exhausted_at_once(batching_server):
    a = np.ones((1, 16), np.float32)
    results: list = []

    def queued():
        c = grpcclient.InferenceServerClient(batching_server.address)
        results.append(_add_sub(c, a, a, model="slow_queue").as_numpy("OUTPUT0"))

    threads = [threading.Thread(target=queued) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for_pending(batching_server, "slow_queue", 2)  # both wait in the queue (max_queue_size 2)
    c = grpcclient.InferenceServerClient(batching_server.address)
    with pytest.raises(InferenceServerException) as err:
        _add_sub(c, a, a, model="slow_queue")
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "queue is full (2 requests waiting)" in err.value.message()
    # answered at once: the two queued requests are still waiting out the 2 s delay
    assert all(t.is_alive() for t in threads)
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 2 and all(np.array_equal(r, 2 * a) for r in results)


def test_instances_reported_in_config(batching_server):
    c = grpcclient.InferenceServerClient(batching_server.address)
    cfg = c.get_model_config("add_sub", as_json=True)["config"]
    assert cfg["instance_group"][0]["count"] == 2
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8]


def test_two_workers_serve_and_stop_cleanly(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), BATCHED_ADD_SUB)
    with start_server(repo, "--workers", "2") as s:
        for _ in range(8):  # new channels: the kernel spreads connections over the workers
            c = grpcclient.InferenceServerClient(s.address)
            a = np.full((2, 16), 3, np.float32)
            np.testing.assert_array_equal(_add_sub(c, a, a).as_numpy("OUTPUT0"), 2 * a)
            c.close()
        assert "with 2 worker processes" in s.log()
    assert "workers exited with [0, 0] after 0 replacement(s); stopped cleanly" in s.log()
    # each worker sizes ORT to its share of the cores, as its default (not as a count the operator set)
    share = max(1, usable_cpus() // 2)
    assert s.log().count(f"{share} intra-op thread(s) each (") == 2
    assert "each (set)" not in s.log()


def test_eager_batching_does_not_wait_for_the_delay_when_idle(batching_server):
    """With eager_batching an idle instance runs what is queued at once: a lone request does not sit out
    the 5 s max_queue_delay (its 2 s deadline would expire if it did)."""
    c = grpcclient.InferenceServerClient(batching_server.address)
    a = np.full((2, 16), 4, np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(_add_sub(c, a, a, model="eager", client_timeout=2.0).as_numpy("OUTPUT0"), 2 * a)
