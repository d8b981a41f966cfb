"""INT8 dynamic (transformers) and static QDQ (convolutions), with its cost in the report."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from tensorwire.export import build_builtin, export_model
from tensorwire.export import cli as export_cli

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.mark.slow
def test_static_qdq_for_a_conv_model(tmp_path):
    b = build_builtin("resnet50")
    report = export_model(b.module, b.example_inputs, name="r8", repository=tmp_path, int8=True,
                          input_names=b.input_names, output_names=b.output_names, dynamic_axes=b.dynamic_axes)
    p = report.precision
    assert p["method"].startswith("static QDQ") and "random samples" in p["calibration"]
    ops = {n.op_type for n in onnx.load(report.model_path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert p["bytes_int8"] < p["bytes_fp32"]
    assert p["latency_ms_eager"] > 0 and p["latency_ms_fp32"] > 0 and p["latency_ms_int8"] > 0
    assert p["speedup_vs_eager"] == pytest.approx(p["latency_ms_eager"] / p["latency_ms_int8"], rel=0.01)
    assert 0 < p["min_cosine"] <= 1 and np.isfinite(p["max_rel_drift"])
    assert {v["variant"] for v in p["variants"]} >= {"static QDQ per-channel"}
    assert isinstance(p["left_in_float"], dict) and "random weights" in p["note"]


@pytest.mark.slow
def test_dynamic_int8_variants_and_calibration_data_through_the_cli(tmp_path, capsys):
    b = build_builtin("bert")
    data = tmp_path / "val.npz"
    rng = np.random.default_rng(0)
    np.savez(data, input_ids=rng.integers(0, 1000, (4, 16), dtype=np.int64),
             attention_mask=np.ones((4, 16), np.int64), token_type_ids=np.zeros((4, 16), np.int64))
    parser = argparse.ArgumentParser(prog="tensorwire")
    export_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "bert", "--int8", "--calibration", str(data), "--model-repository",
                              str(tmp_path / "models")])
    assert export_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "int8       dynamic per-" in out and "on data  4 samples" in out and "vs eager" in out
    assert "cosine" in out and "random weights" in out
    import json

    report = json.loads((tmp_path / "models" / "bert" / "export_report.json").read_text())
    p = report["precision"]
    assert {v["variant"] for v in p["variants"]} == {"dynamic per-tensor", "dynamic per-channel",
                                                     "dynamic per-channel, ORT pre-processing"}
    assert p["validation"]["samples"] == 4 and 0 < p["validation"]["min_cosine"] <= 1
    assert b.input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_calibration_without_int8_is_refused(tmp_path):
    from tensorwire.export import ExportError

    b = build_builtin("mlp")
    with pytest.raises(ExportError, match="calibration data is for int8"):
        export_model(b.module, b.example_inputs, name="m", repository=tmp_path, calibration={"input": np.zeros(1)})


def test_transformer_fusions_declare_their_domain_and_quantize(tmp_path):
    """ORT's fused ops (SkipLayerNormalization...) live in com.microsoft; undeclared, the quantizer refuses them."""
    from tensorwire.export import optimize, quantize

    b = build_builtin("bert")
    report = export_model(b.module, b.example_inputs, name="b", repository=tmp_path, input_names=b.input_names,
                          output_names=b.output_names, dynamic_axes=b.dynamic_axes, optimize=False)
    fused, counts = optimize.fuse_transformer(onnx.load(report.model_path))
    assert counts.get("SkipLayerNormalization", 0) > 0, counts
    assert any(o.domain == "com.microsoft" for o in fused.opset_import)
    feeds = {k: v.numpy() for k, v in b.example_inputs.items()}
    q, info = quantize.int8(fused, feeds, "dynamic", None)
    assert any(v["ok"] for v in info["variants"]) and q.graph.node
