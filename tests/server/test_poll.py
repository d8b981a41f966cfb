"""--model-control-mode poll on a real server under 8 concurrent clients: a model added, a new version,
a broken version, a half-written version, a model removed. Every change becomes visible (generous
timeouts, no timed assertions); the model that stays never fails a request. Added test time: ~15 s."""

from __future__ import annotations

import os
import shutil

import pytest
import tritonclient.grpc as grpcclient
from clients import Clients, wait_until
from models import ADD_SUB_CONFIG, add_sub_model, identity_model, write_model
from onnx import TensorProto
from serving import start_server

POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.5")


def _atomic_version(repo, model: str, version: int, onnx_bytes: bytes) -> None:
    """The documented recipe: write the version beside the repository, then rename it into place."""
    staging = repo.parent / f".staging-{model}-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(onnx_bytes)
    os.rename(staging, repo / model / str(version))


def _index(c) -> dict:
    return {(m["name"], m.get("version", "")): m for m in c.get_model_repository_index(as_json=True)["models"]}


def test_polling_follows_the_repository_without_failing_a_request(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    allowed = {0.0, 100.0, 400.0}
    with start_server(repo, *POLL) as s, Clients(s.address, offsets_allowed=lambda o: o in allowed) as clients:
        c = grpcclient.InferenceServerClient(s.address)
        clients.wait_for_requests(5)

        # a new model appears (written beside the repository, renamed in)
        staging = tmp_path / "ident"
        write_model(staging.parent, staging.name, identity_model(TensorProto.FLOAT), "max_batch_size: 8\n")
        os.rename(staging, repo / "ident")
        wait_until(lambda: c.is_model_ready("ident"), "new model ident ready")

        # a new version of the model in use: answers move to it
        _atomic_version(repo, "add_sub", 2, add_sub_model(offset=100.0).SerializeToString())
        wait_until(lambda: set(clients.last_offset) == {100.0}, "every client answered by version 2")

        # a broken version: refused, version 2 keeps serving; polling goes on
        _atomic_version(repo, "add_sub", 3, b"not a graph")
        wait_until(lambda: _index(c).get(("add_sub", "3"), {}).get("state") == "UNAVAILABLE", "version 3 failed")
        assert _index(c)[("add_sub", "2")]["state"] == "READY"

        # a half-written version: never serves; once complete, it loads
        whole = add_sub_model(offset=400.0).SerializeToString()
        (repo / "add_sub" / "4").mkdir()
        (repo / "add_sub" / "4" / "model.onnx").write_bytes(whole[: len(whole) // 2])
        clients.wait_for_requests(50)
        assert 400.0 not in clients.offsets
        (repo / "add_sub" / "4" / "model.onnx").write_bytes(whole)
        wait_until(lambda: set(clients.last_offset) == {400.0}, "every client answered by version 4")

        # a model removed from the repository unloads
        shutil.rmtree(repo / "ident")
        wait_until(lambda: not c.is_model_ready("ident"), "removed model ident unloaded")

        clients.wait_for_requests(10)
        clients.stop()
        assert clients.failures == [], clients.failures[:5]
        assert {0.0, 100.0, 400.0} <= clients.offsets
    log = s.log()
    for event in ("event=model_loaded", "event=model_load_failed", "event=model_unloaded", "event=model_drained"):
        assert event in log, event


def test_poll_refuses_model_control_rpcs(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    with start_server(repo, *POLL) as s:
        c = grpcclient.InferenceServerClient(s.address)
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException) as err:
            c.unload_model("add_sub")
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert c.is_model_ready("add_sub")
