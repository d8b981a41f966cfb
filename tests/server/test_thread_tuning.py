"""Intra-op threads chosen at load time (tensorwire.server.thread_tuning) and reported in ModelConfig."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from tensorwire import proto as pb
from tensorwire.bench.models import image_model, mlp_model
from tensorwire.proto.datatypes import DATATYPES
from tensorwire.server import thread_tuning as threads
from tensorwire.server.affinity import usable_cpus
from tensorwire.server.model_config import ModelSpec, TensorSpec
from tensorwire.server.repository import ModelRepository
from tensorwire.server.settings import ServerSettings

MULTICORE = pytest.mark.skipif(usable_cpus() < 2, reason="one core: ORT's pool is one thread, nothing to time")


def spec(inputs: list[tuple[str, str, tuple]], max_batch_size: int = 4, config: str = "") -> ModelSpec:
    cfg = pb.ModelConfig(name="m")
    text_format.Parse(config, cfg)
    return ModelSpec("m", max_batch_size, [TensorSpec(n, DATATYPES[d], dims) for n, d, dims in inputs], [], cfg)


def test_warmup_feeds_use_fixed_dims_or_the_configs_model_warmup():
    feeds = threads.warmup_feeds(spec([("x", "FP32", (3, 4)), ("ids", "INT64", (5,))]))
    assert feeds["x"].shape == (1, 3, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (1, 5) and not feeds["ids"].any()  # zeros: a valid index anywhere
    assert threads.warmup_feeds(spec([("x", "FP32", (3, 4))]), batch=8)["x"].shape == (8, 3, 4)
    assert threads.warmup_feeds(spec([("x", "FP16", (2,))], max_batch_size=0))["x"].shape == (2,)

    dynamic = [("ids", "INT64", (-1,))]
    assert threads.warmup_feeds(spec(dynamic)) is None  # a made-up sequence length would not be fair
    warm = spec(dynamic, config='model_warmup { batch_size: 2 inputs { key: "ids" value { data_type: TYPE_INT64 '
                                'dims: 128 zero_data: true } } }')
    assert threads.warmup_feeds(warm)["ids"].shape == (2, 128)
    assert threads.warmup_feeds(spec([("s", "BYTES", (1,))])) is None


class Timed:
    """A stand-in session whose "run" reports a fixed median (the choice logic is what is under test; the
    measurement is injected, so nothing here depends on this machine's timing)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def run(self, _names, _feeds) -> float:
        self.calls += 1
        return self.seconds


def _reported(run, _deadline, _max_runs=None) -> float:
    return run()


def test_the_faster_session_wins_and_slow_models_keep_the_pool():
    assert threads.faster_thread_count(Timed(300e-6), Timed(50e-6), {}, 4, _reported)[0] == 1
    assert threads.faster_thread_count(Timed(50e-6), Timed(300e-6), {}, 4, _reported)[0] == 4
    slow_pool, single = Timed(threads.SMALL_MODEL_S * 1.5), Timed(0)
    n, why = threads.faster_thread_count(slow_pool, single, {}, 4, _reported)
    assert n == 4 and single.calls == 0 and "large enough for the pool" in why


ONE_INSTANCE = "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"  # the timed case: one session


def _repository(tmp_path: Path, models: dict, config: str = ONE_INSTANCE) -> Path:
    for name, model in models.items():
        (tmp_path / name / "1").mkdir(parents=True)
        onnx.save(model, str(tmp_path / name / "1" / "model.onnx"))
        (tmp_path / name / "config.pbtxt").write_text(config)
    return tmp_path


def _loaded(repo: Path, caplog, **settings) -> dict[str, tuple[str, int, str]]:
    """name -> (thread count ModelConfig reports, threads the session really has, the load log line)."""
    with caplog.at_level(logging.INFO, logger="tensorwire.loader"):
        r = ModelRepository(ServerSettings(model_repository=repo, **settings))
        r.load_all()
    out = {}
    for name in r.model_names():
        m = r.get(name)
        line = next(rec.getMessage() for rec in caplog.records if f"model '{name}' version" in rec.getMessage())
        out[name] = (m.spec.config.parameters["intra_op_thread_count"].string_value,
                     m.sessions[0].get_session_options().intra_op_num_threads, line)
    r.close()
    return out


@MULTICORE
def test_small_models_are_timed_and_config_reports_what_runs(tmp_path, caplog):
    loaded = _loaded(_repository(tmp_path, {"image": image_model(), "mlp": mlp_model()}), caplog)
    for name, (reported, actual, line) in loaded.items():
        assert reported == str(actual), name
        assert actual in (1, usable_cpus()), name
        assert f"{actual} intra-op thread(s) each (timed: 1 thread" in line, line


def test_a_set_count_is_not_timed(tmp_path, caplog):
    repo = _repository(tmp_path, {"image": image_model()})
    reported, actual, line = _loaded(repo, caplog, intra_op_threads=2)["image"]
    assert (reported, actual) == ("2", 2) and "(set)" in line
    param = 'max_batch_size: 8\nparameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    (repo / "image" / "config.pbtxt").write_text(param)
    caplog.clear()
    reported, actual, line = _loaded(repo, caplog)["image"]
    assert (reported, actual) == ("1", 1) and "(set)" in line


@MULTICORE
def test_dynamic_dims_without_a_warmup_keep_the_default(tmp_path, caplog):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", "seq"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    reported, actual, line = _loaded(_repository(tmp_path, {"seq": model}), caplog)["seq"]
    assert reported == str(actual) == str(usable_cpus())
    assert "not timed: no fixed warm-up shape" in line
