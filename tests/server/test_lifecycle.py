"""Model lifecycle and process lifecycle: repository index/load/unload, load failures, readiness,
graceful shutdown, and a start without ONNX Runtime. Each test runs its own real server."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from clients import LIVE_METRICS, wait_for_pending
from models import ADD_SUB_CONFIG, add_sub_model, identity_model, write_model
from onnx import TensorProto, helper
from serving import start_server
from tritonclient.utils import InferenceServerException

EXPLICIT = ("--model-control-mode", "explicit")


def _add_sub_inputs(value: float = 1.0):
    a = np.full((1, 16), value, np.float32)
    ins = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for t in ins:
        t.set_data_from_numpy(a)
    return ins


def test_repository_index_load_unload(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    write_model(repo, "ident", identity_model(TensorProto.FLOAT))
    with start_server(repo, *EXPLICIT, "--load-model", "add_sub") as s:
        c = grpcclient.InferenceServerClient(s.address)
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["add_sub"]["state"] == "READY" and index["add_sub"]["version"] == "1"
        assert index["ident"]["state"] == "UNLOADED"
        with pytest.raises(InferenceServerException) as err:
            c.infer("ident", [])
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "not loaded" in err.value.message()

        c.load_model("ident")
        assert c.is_model_ready("ident")
        c.unload_model("add_sub")
        assert not c.is_model_ready("add_sub")
        with pytest.raises(InferenceServerException) as err:
            c.infer("add_sub", _add_sub_inputs())
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert "UNLOADED" in err.value.message()
        ready = c.get_model_repository_index(as_json=True)["models"]
        assert [m["name"] for m in ready if m.get("state") == "READY"] == ["ident"]

        c.load_model("add_sub")
        out = c.infer("add_sub", _add_sub_inputs(2.0)).as_numpy("OUTPUT0")
        assert out[0, 0] == 4.0
        with pytest.raises(InferenceServerException) as err:
            c.load_model("not_there")
        assert err.value.status() == "StatusCode.NOT_FOUND"
        for name in ("../models", "..", "/etc", "a/b"):  # not a model name: refused before any file is looked at
            with pytest.raises(InferenceServerException) as err:
                c.load_model(name)
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT", name


def test_load_with_config_override(tmp_path):
    """tritonclient's load_model(config=...) sends a ModelConfig as JSON; it replaces config.pbtxt."""
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    with start_server(repo, *EXPLICIT, "--load-model", "*") as s:
        c = grpcclient.InferenceServerClient(s.address)
        c.load_model("add_sub", config=json.dumps({"max_batch_size": 2}))
        assert c.get_model_config("add_sub", as_json=True)["config"]["max_batch_size"] == 2
        big = [grpcclient.InferInput(n, [3, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for t in big:
            t.set_data_from_numpy(np.zeros((3, 16), np.float32))
        with pytest.raises(InferenceServerException) as err:
            c.infer("add_sub", big)
        assert "batch size 3 exceeds the model's max_batch_size 2" in err.value.message()


def _broken_repository(repo):
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    wrong = ADD_SUB_CONFIG.replace('name: "add_sub"', 'name: "wrong_type"').replace(
        "INPUT1\" data_type: TYPE_FP32", "INPUT1\" data_type: TYPE_INT64")
    write_model(repo, "wrong_type", add_sub_model(), wrong)
    return repo


def test_broken_model_is_unavailable_with_reason(tmp_path):
    repo = _broken_repository(tmp_path / "models")
    with start_server(repo, *EXPLICIT, "--load-model", "*") as s:
        c = grpcclient.InferenceServerClient(s.address)
        assert c.is_server_live()
        assert not c.is_server_ready()  # strict readiness: a model asked for at startup failed
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "ONNX Runtime cannot load" in index["broken"]["reason"]
        assert str(tmp_path) not in index["broken"]["reason"]  # no host path reaches a client
        assert index["wrong_type"]["state"] == "UNAVAILABLE"
        assert "'INPUT1' has data_type TYPE_INT64 but the ONNX graph has TYPE_FP32" in index["wrong_type"]["reason"]
        assert c.infer("add_sub", _add_sub_inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
        c.unload_model("broken")
        c.unload_model("wrong_type")
        assert c.is_server_ready()
    with start_server(repo, *EXPLICIT, "--load-model", "*", "--no-strict-readiness") as s:
        assert grpcclient.InferenceServerClient(s.address).is_server_ready()


def test_mode_none_exits_when_a_model_fails_at_start(tmp_path):
    """In the default mode nothing can load a model later, so a failure at start is fatal (Triton's
    --exit-on-error), said on stderr; --no-exit-on-error serves the others, not ready while strict."""
    repo = _broken_repository(tmp_path / "models")
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo),
                          "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "model(s) broken, wrong_type failed to load at start" in out.stderr
    assert "--no-exit-on-error" in out.stderr
    with start_server(repo, "--no-exit-on-error") as s:
        c = grpcclient.InferenceServerClient(s.address)
        assert not c.is_server_ready()
        assert c.infer("add_sub", _add_sub_inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0


def _slow_model() -> onnx.ModelProto:
    """X [n, 512] FP32 through 200 chained 512x512 MatMuls: about a second per call at n=2048 here."""
    f = TensorProto.FLOAT
    w = np.eye(512, dtype=np.float32)
    nodes, prev = [], "X"
    for i in range(200):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("X", f, ["n", 512])],
                              [helper.make_tensor_value_info("Y", f, ["n", 512])],
                              initializer=[helper.make_tensor("W", f, [512, 512], w.reshape(-1).tolist())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path, frontend):
    repo = tmp_path / "models"
    write_model(repo, "slow", _slow_model(), "max_batch_size: 0\n")
    with start_server(repo, "--grpc-frontend", frontend, "--shutdown-grace", "30", *LIVE_METRICS) as s:
        c = grpcclient.InferenceServerClient(s.address)
        x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
        inp = grpcclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("slow", [inp])  # warm up
        result: dict = {}

        def call() -> None:
            try:
                result["y"] = c.infer("slow", [inp]).as_numpy("Y")
                result["done"] = time.monotonic()
            except Exception as exc:  # recorded and asserted below
                result["error"] = exc

        t = threading.Thread(target=call)
        t.start()
        wait_for_pending(s, "slow", 1)  # the request is in flight
        signalled = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        error = result.get("error")
        assert error is None, (error.status(), error.message())
        assert result["done"] > signalled  # it really was in flight when SIGTERM arrived
        np.testing.assert_allclose(result["y"], x, rtol=1e-5)
        assert s.process.wait(timeout=30) == 0
        assert "stopped cleanly" in s.log()
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(s.address).is_server_live()


def test_start_without_onnxruntime_says_which_extra(tmp_path):
    """A serving host with neither onnxruntime nor onnxruntime-gpu gets told what to install."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo),
                          "--grpc-port", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert 'pip install "tensorwire[cpu]"' in out.stderr and 'pip install "tensorwire[gpu]"' in out.stderr


def test_missing_repository_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository",
                          str(tmp_path / "nowhere"), "--grpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is not a directory" in out.stderr


def test_triton_repository_copy_loads_unchanged(tmp_path, test_repository):
    """A repository written for Triton (config with backend, version_policy, dynamic_batching) loads as is."""
    repo = tmp_path / "models"
    shutil.copytree(test_repository / "add_sub", repo / "add_sub")
    (repo / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace(
        'platform: "onnxruntime_onnx"', 'backend: "onnxruntime"\nversion_policy: { latest: { num_versions: 1 } }\n'
        'dynamic_batching { max_queue_delay_microseconds: 100 }\n'
        'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 '
        'dims: [16] zero_data: true } } } ]'))
    with start_server(repo) as s:
        c = grpcclient.InferenceServerClient(s.address)
        assert c.infer("add_sub", _add_sub_inputs(3.0)).as_numpy("OUTPUT1")[0, 0] == 0.0


def test_expired_deadline_is_not_computed(tmp_path, frontend):
    """With the one instance busy, a request with a 0.3 s deadline expires while it waits: the client gets
    DEADLINE_EXCEEDED and the server never runs the model for it (a later request, served after it, is)."""
    repo = tmp_path / "models"
    write_model(repo, "slow", _slow_model(), "max_batch_size: 0\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n")
    with start_server(repo, "--grpc-frontend", frontend, "--handler-threads", "1", *LIVE_METRICS) as s:
        c = grpcclient.InferenceServerClient(s.address)
        x = np.ones((2048, 512), np.float32)
        inp = grpcclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("slow", [inp])  # warm up: execution 1
        busy = threading.Thread(target=lambda: c.infer("slow", [inp]))  # execution 2
        busy.start()
        wait_for_pending(s, "slow", 1)  # execution 2 holds the only handler thread
        with pytest.raises(InferenceServerException) as err:
            c.infer("slow", [inp], client_timeout=0.3)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        busy.join(timeout=60)
        c.infer("slow", [inp])  # execution 3, after the expired request reached the thread (or never did)
        stats = c.get_inference_statistics("slow", as_json=True)["model_stats"][0]
        assert int(stats["execution_count"]) == 3
        assert int(stats["inference_stats"]["success"]["count"]) == 3


def test_more_rpcs_than_admitted_get_resource_exhausted(tmp_path, frontend):
    repo = tmp_path / "models"
    write_model(repo, "slow", _slow_model(), "max_batch_size: 0\n")
    with start_server(repo, "--grpc-frontend", frontend, "--max-concurrent-rpcs", "1", *LIVE_METRICS) as s:
        c = grpcclient.InferenceServerClient(s.address)
        x = np.ones((2048, 512), np.float32)
        inp = grpcclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        busy = threading.Thread(target=lambda: c.infer("slow", [inp]))
        busy.start()
        wait_for_pending(s, "slow", 1)  # the one admitted RPC is running
        with pytest.raises(InferenceServerException) as err:
            grpcclient.InferenceServerClient(s.address).infer("slow", [inp])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        busy.join(timeout=60)
        np.testing.assert_array_equal(c.infer("slow", [inp]).as_numpy("Y"), x)
