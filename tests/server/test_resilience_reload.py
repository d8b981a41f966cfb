"""Reload semantics on a real server in explicit mode under 8 concurrent clients: a
broken or half-copied new version leaves the serving version answering with zero failed requests, a
reload drains what the old instance had queued, and a load and an unload of one model run in order."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from clients import Clients, wait_until
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from onnx import TensorProto, helper
from serving import start_server
from tritonclient.utils import InferenceServerException

EXPLICIT = ("--model-control-mode", "explicit", "--load-model", "add_sub")
BATCHING = ADD_SUB_CONFIG + "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"


def _index(client) -> dict[tuple[str, str], dict]:
    return {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}


def _failed_reload_keeps_serving(repo, break_version) -> None:
    """Load add_sub while version 2 is broken: it fails, version 1 keeps answering every request."""
    with start_server(repo, *EXPLICIT) as s, Clients(s.address, offsets_allowed=lambda o: o == 0.0) as clients:
        c = grpcclient.InferenceServerClient(s.address)
        clients.wait_for_requests(5)
        break_version(repo / "add_sub" / "2")
        with pytest.raises(InferenceServerException) as err:
            c.load_model("add_sub")
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        clients.wait_for_requests(20)
        clients.stop()
        assert clients.failures == [], clients.failures[:5]
        index = _index(c)
        assert index[("add_sub", "1")]["state"] == "READY"
        assert index[("add_sub", "2")]["state"] == "UNAVAILABLE"
        assert "version 2" in index[("add_sub", "2")]["reason"]
        assert c.is_model_ready("add_sub") and c.is_server_ready()  # the model is available: version 1
        assert c.infer("add_sub", _inputs(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
    assert "model_load_failed" in s.log() and "still serving version(s) 1" in s.log()


def _inputs(value: float):
    from clients import add_sub_inputs

    return add_sub_inputs(value)


def test_broken_new_version_keeps_the_old_one_serving(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)

    def broken(version_dir):
        version_dir.mkdir()
        (version_dir / "model.onnx").write_bytes(b"not an onnx graph")

    _failed_reload_keeps_serving(repo, broken)


def test_half_copied_version_keeps_the_old_one_serving(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    whole = add_sub_model(offset=5.0).SerializeToString()

    def half_copied(version_dir):
        version_dir.mkdir()
        (version_dir / "model.onnx").write_bytes(whole[: len(whole) // 2])

    _failed_reload_keeps_serving(repo, half_copied)


def test_reload_drains_what_the_batcher_queued(tmp_path):
    """Three reloads of a batching model while 8 clients keep its queue busy: not one request fails."""
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), BATCHING)
    with start_server(repo, *EXPLICIT) as s, Clients(s.address, offsets_allowed=lambda o: o == 0.0) as clients:
        c = grpcclient.InferenceServerClient(s.address)
        for _ in range(3):
            clients.wait_for_requests(10)
            c.load_model("add_sub")
        clients.wait_for_requests(10)
        clients.stop()
        assert clients.failures == [], clients.failures[:5]
        assert clients.total >= 8 * 40
    assert s.log().count("event=model_drained") >= 3


def _slow_model() -> onnx.ModelProto:
    """A graph whose load takes a noticeable time (a 2048x2048 weight, optimised per instance)."""
    f = TensorProto.FLOAT
    weight = helper.make_tensor("W", f, [2048, 2048], np.ones(2048 * 2048, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "slow",
                              [helper.make_tensor_value_info("X", f, ["batch", 2048])],
                              [helper.make_tensor_value_info("Y", f, ["batch", 2048])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_unload_sent_during_a_slow_load_wins(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    write_model(repo, "slow", _slow_model(), "max_batch_size: 4\ninstance_group [ { count: 8 kind: KIND_CPU } ]\n")
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        loader = threading.Thread(target=c.load_model, args=("slow",))
        loader.start()
        wait_until(lambda: _index(c).get(("slow", ""), {}).get("state") == "LOADING", "slow is LOADING", 60)
        assert not c.is_server_ready()  # strict readiness: a model is loading
        c.unload_model("slow")  # sent while the load runs: served after it, so the model ends unloaded
        loader.join(timeout=120)
        assert not c.is_model_ready("slow")
        assert _index(c)[("slow", "")]["state"] == "UNLOADED"
        assert c.is_server_ready()
