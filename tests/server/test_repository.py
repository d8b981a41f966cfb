"""ModelRepository in-process: what a load leaves behind when it fails for any reason, the JSON config
override, and the newest version after a reload (the server tests cover the same over gRPC)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models import VERSIONED_CONFIG, add_sub_model, write_model

from tensorwire.errors import InvalidArgument, ModelLoadError
from tensorwire.proto.messages import InferRequest, InputTensor, RequestedOutput
from tensorwire.server.repository import READY, UNAVAILABLE, ModelRepository
from tensorwire.server.settings import ServerSettings


def _repository(root) -> ModelRepository:
    return ModelRepository(ServerSettings(model_repository=root))


def _add(model, offset: float) -> float:
    """OUTPUT0 of the add_sub model for zeros: its offset, i.e. which version answered."""
    x = np.zeros((1, 16), np.float32).tobytes()
    request = InferRequest(inputs=[InputTensor("INPUT0", "FP32", (1, 16)), InputTensor("INPUT1", "FP32", (1, 16))],
                           outputs=[RequestedOutput("OUTPUT0")], raw_input_contents=[x, x])
    return float(model.infer(request).outputs[0].data[0, 0])


def test_a_load_failing_outside_our_checks_leaves_a_state_with_the_reason(tmp_path, monkeypatch):
    """A failure no check foresaw (here: a bug in a step of the load) is told by its kind only, and the
    model keeps it as its state; the other models load."""
    import tensorwire.server.repository as repository_module

    def flawed(cfg):
        if cfg.name == "broken":
            raise KeyError("/host/path/that/must/not/leak")

    monkeypatch.setattr(repository_module, "check_supported", flawed)
    write_model(tmp_path, "good", add_sub_model(), "max_batch_size: 8\n")
    write_model(tmp_path, "broken", add_sub_model(), "max_batch_size: 8\n")
    repo = _repository(tmp_path)
    repo.load_all()  # the server still starts
    states = {name: (state, reason) for name, _, state, reason in repo.index()}
    assert states["good"][0] == READY
    assert states["broken"][0] == UNAVAILABLE and "KeyError" in states["broken"][1]
    assert "/host/path" not in states["broken"][1]
    assert repo.startup_failures == ["broken"]
    with pytest.raises(ModelLoadError, match="cannot load"):
        repo.load("broken")


def test_a_config_that_is_not_utf8_is_refused_with_the_reason(tmp_path):
    write_model(tmp_path, "broken", add_sub_model(), None)
    (tmp_path / "broken" / "config.pbtxt").write_bytes(b"max_batch_size: 8 # \xff\xfe not UTF-8\n")
    repo = _repository(tmp_path)
    repo.load_all()
    states = {name: (state, reason) for name, _, state, reason in repo.index()}
    assert states["broken"][0] == UNAVAILABLE and "not UTF-8 text" in states["broken"][1]


def test_config_override_name_and_batch_size(tmp_path):
    write_model(tmp_path, "add_sub", add_sub_model(), "max_batch_size: 8\n")
    repo = _repository(tmp_path)
    with pytest.raises(InvalidArgument, match="names the model 'other'"):
        repo.load("add_sub", json.dumps({"name": "other"}))
    with pytest.raises(InvalidArgument, match="not a ModelConfig"):
        repo.load("add_sub", "{not json")
    repo.load("add_sub", json.dumps({"maxBatchSize": 0}))  # protobuf's JSON spelling counts as written
    assert repo.get("add_sub").spec.max_batch_size == 0
    # the override is used even when the file on disk is broken
    (tmp_path / "add_sub" / "config.pbtxt").write_text("max_batch_size: [[[")
    repo.load("add_sub", json.dumps({"max_batch_size": 2}))
    assert repo.get("add_sub").spec.max_batch_size == 2
    repo.close()


def test_the_newest_version_follows_reloads(tmp_path):
    write_model(tmp_path, "versioned", add_sub_model(offset=100.0), VERSIONED_CONFIG, version=1)
    repo = _repository(tmp_path)
    repo.load("versioned")
    assert _add(repo.get("versioned"), 0) == 100.0  # served (and remembered) before the reload
    write_model(tmp_path, "versioned", add_sub_model(offset=300.0), None, version=3)
    repo.load("versioned")
    assert repo.get("versioned").version == "3" and _add(repo.get("versioned"), 0) == 300.0
    assert _add(repo.get("versioned", "1"), 0) == 100.0
    repo.close()
