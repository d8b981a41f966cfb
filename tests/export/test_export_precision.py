"""Opt-in FP16 and dynamic INT8: the served graph changes precision, the report shows drift and latency."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from tensorwire import proto as pb
from tensorwire.export import ExportError, build_builtin, export_model
from tensorwire.export.testing import infer_grpc, random_inputs, torch_reference
from tensorwire.proto.datatypes import DATATYPES

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    repo = tmp_path_factory.mktemp("precision") / "models"
    mlp = build_builtin("mlp")
    bert = build_builtin("bert")
    common = dict(repository=repo, max_batch_size=8)
    r16 = export_model(mlp.module, mlp.example_inputs, name="mlp_fp16", fp16=True, **common)
    r8 = export_model(bert.module, bert.example_inputs, name="bert_int8", int8=True, input_names=bert.input_names,
                      output_names=bert.output_names, dynamic_axes=bert.dynamic_axes, **common)
    return repo, {"mlp_fp16": (mlp, r16), "bert_int8": (bert, r8)}


def test_fp16_graph_keeps_fp32_io(variants):
    repo, models = variants
    _, report = models["mlp_fp16"]
    p = report.precision
    assert p["mode"] == "fp16"
    assert 0 < p["max_abs_drift"] < 1e-2          # FP16 rounding, not a different model
    assert p["latency_ms_fp32"] > 0 and p["latency_ms_fp16"] > 0 and p["speedup"] > 0
    assert p["bytes_fp16"] < 0.6 * p["bytes_fp32"]
    assert report.parity_ok                        # the FP32 graph passed strict parity first
    model = onnx.load(report.model_path)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    cfg = text_format.Parse((repo / "mlp_fp16" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert cfg.input[0].data_type == DATATYPES["FP32"].config_enum
    assert cfg.parameters["tensorwire.precision"].string_value == "fp16"


def test_int8_graph_is_quantized(variants):
    _, models = variants
    _, report = models["bert_int8"]
    p = report.precision
    assert p["mode"] == "int8" and np.isfinite(p["max_abs_drift"]) and p["max_abs_drift"] > 0
    assert p["latency_ms_int8"] > 0 and p["bytes_int8"] < p["bytes_fp32"]
    ops = {n.op_type for n in onnx.load(report.model_path).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops
    assert {c["label"] for c in p["cases"]} >= {"export shape", "batch=1", "sequence=8"}


def test_precision_tolerance_is_enforced(tmp_path):
    mlp = build_builtin("mlp")
    with pytest.raises(ExportError, match="fp16 drift exceeds"):
        export_model(mlp.module, mlp.example_inputs, name="m", repository=tmp_path, fp16=True,
                     precision_rtol=0.0, precision_atol=1e-9)
    assert not (tmp_path / "m").exists()


def test_variants_served(variants):
    from serving import start_server

    repo, models = variants
    with start_server(repo) as server:
        for name, (b, _report) in models.items():
            example = b.example_inputs if isinstance(b.example_inputs, dict) else {"input": b.example_inputs}
            inputs = random_inputs(example, {"batch": 3}, b.dynamic_axes, seed=5)
            want = torch_reference(b.module, inputs, keywords=isinstance(b.example_inputs, dict))
            got = infer_grpc(server.address, name, inputs, b.output_names)
            tol = 1e-2 if name == "mlp_fp16" else 0.5      # int8 on random weights drifts; see the report
            for w, g in zip(want, got):
                assert g.dtype == np.float32 and g.shape == w.shape
                np.testing.assert_allclose(g, w, atol=tol, rtol=tol)
