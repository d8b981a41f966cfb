"""ONNX Runtime session options come from one place: server settings, overridden by the model config."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError
from tensorwire.server.affinity import usable_cpus
from tensorwire.server.session import session_options
from tensorwire.server.settings import ServerSettings


def cfg(text: str = ""):
    c = pb.ModelConfig(name="m")
    text_format.Parse(text, c)
    return c


def settings(**kw) -> ServerSettings:
    return ServerSettings(model_repository=Path("."), **kw)


def test_instances_share_the_cores():
    cores = usable_cpus()  # the affinity mask, not the host total
    assert session_options(ort, cfg(), settings(), instances=1).intra_op_num_threads == cores
    assert session_options(ort, cfg(), settings(), instances=2).intra_op_num_threads == max(1, cores // 2)
    assert session_options(ort, cfg(), settings(intra_op_threads=3), instances=2).intra_op_num_threads == 3


def test_model_parameters_override_the_server():
    c = cfg('parameters { key: "intra_op_thread_count" value { string_value: "1" } } '
            'parameters { key: "allow_spinning" value { string_value: "false" } }')
    so = session_options(ort, c, settings(intra_op_threads=4))
    assert so.intra_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_spinning_follows_the_server_flag_and_is_off_by_default():
    """Off by default (bench/results/cpu: a spinning pool thread costs CPU per request and latency on 2 cores);
    --intra-op-spinning turns it on, a model's allow_spinning parameter overrides either."""
    off = session_options(ort, cfg(), settings())
    on = session_options(ort, cfg(), settings(intra_op_spinning=True))
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    model_on = session_options(ort, cfg('parameters { key: "allow_spinning" value { string_value: "1" } }'),
                               settings())
    assert model_on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    import argparse

    from tensorwire.server.flags import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).intra_op_spinning is False
    assert parser.parse_args(["--intra-op-spinning"]).intra_op_spinning is True
    assert parser.parse_args(["--intra-op-spinning", "false"]).intra_op_spinning is False


def test_graph_level():
    assert session_options(ort, cfg("optimization { graph { level: -1 } }"), settings()).graph_optimization_level \
        == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert session_options(ort, cfg(), settings()).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_bad_thread_count_is_a_load_error():
    with pytest.raises(ModelLoadError, match="intra_op_thread_count must be an integer, got 'two'"):
        session_options(ort, cfg('parameters { key: "intra_op_thread_count" value { string_value: "two" } }'),
                        settings())
