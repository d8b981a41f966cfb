"""Execution provider plans for the machines CI does not have (the choice is a pure function)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError
from tensorwire.server.providers import CPU, CUDA, TRT, plan_providers

ALL = [TRT, CUDA, CPU]


def cfg(text: str = ""):
    c = pb.ModelConfig(name="m")
    text_format.Parse(text, c)
    return c


def test_default_order_takes_what_is_installed():
    assert plan_providers(cfg(), ALL, [], Path("/c")).names == ALL
    plan = plan_providers(cfg(), [CPU], [], Path("/c"))
    assert plan.names == [CPU]
    assert any("TensorrtExecutionProvider (not available" in s for s in plan.skipped)


def test_cpu_instance_group_forces_cpu():
    plan = plan_providers(cfg("instance_group { kind: KIND_CPU count: 2 }"), ALL, [], Path("/c"))
    assert plan.names == [CPU] and "KIND_CPU" in plan.reason


def test_server_override_wins():
    assert plan_providers(cfg("instance_group { kind: KIND_CPU }"), ALL, ["cuda"], Path("/c")).names == [CUDA, CPU]


def test_tensorrt_options_from_config():
    c = cfg("""
        max_batch_size: 16
        input { name: "x" data_type: TYPE_FP32 dims: [3, 224, 224] }
        instance_group { kind: KIND_GPU gpus: [1] }
        optimization { execution_accelerators { gpu_execution_accelerator {
            name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } } }
    """)
    plan = plan_providers(c, ALL, [], Path("/cache"), "3")
    assert plan.names == [TRT, CUDA, CPU]
    trt = dict(plan.providers)[TRT]
    assert trt["device_id"] == "1" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/cache/m/3"
    assert trt["trt_profile_min_shapes"] == "x:1x3x224x224"
    assert trt["trt_profile_opt_shapes"] == "x:8x3x224x224"
    assert trt["trt_profile_max_shapes"] == "x:16x3x224x224"


def test_no_profiles_when_other_dims_vary():
    c = cfg('max_batch_size: 8 input { name: "ids" data_type: TYPE_INT64 dims: [-1] }')
    assert "trt_profile_min_shapes" not in dict(plan_providers(c, ALL, [], Path("/c")).providers)[TRT]


def test_cuda_graphs_flag():
    c = cfg("optimization { cuda { graphs: true } }")
    assert dict(plan_providers(c, ALL, [], Path("/c")).providers)[CUDA]["enable_cuda_graph"] == "1"


def test_unknown_provider_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown execution provider 'npu'"):
        plan_providers(cfg(), ALL, ["npu"], Path("/c"))
