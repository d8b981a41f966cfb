"""Small configs of every built-in architecture: exported, parity at 2+ sizes per dynamic axis, served."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import text_format

from tensorwire import proto as pb
from tensorwire.export import build_builtin, export_model
from tensorwire.export.testing import infer_grpc, random_inputs, torch_reference
from tensorwire.proto.datatypes import DATATYPES

pytest.importorskip("torch")
pytest.importorskip("transformers")

NAMES = ["mlp", "resnet50", "bert", "distilbert", "vit"]
# Sizes asked of the server, per model: (dynamic label -> size), none of them the export shape.
SERVED_SIZES = {
    "mlp": [{"batch": 1}, {"batch": 5}],
    "resnet50": [{"batch": 1, "height": 48, "width": 80}, {"batch": 3}],
    "bert": [{"batch": 1, "sequence": 7}, {"batch": 4, "sequence": 24}],
    "distilbert": [{"batch": 3, "sequence": 5}, {"batch": 1, "sequence": 32}],
    "vit": [{"batch": 1}, {"batch": 6}],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("export") / "models"
    out = {}
    for name in NAMES:
        b = build_builtin(name, size="small")
        report = export_model(b.module, b.example_inputs, name=name, repository=repo, input_names=b.input_names,
                              output_names=b.output_names, dynamic_axes=b.dynamic_axes, max_batch_size=8)
        out[name] = (b, report)
    return repo, out


@pytest.mark.parametrize("name", NAMES)
def test_builtin_export_report(exported, name):
    repo, models = exported
    b, report = models[name]
    assert report.exporter in ("dynamo", "torchscript")
    assert report.parity_ok
    assert report.opset >= 17
    assert report.nodes_exported > 0 and report.nodes_served > 0
    assert report.parity_max_abs_diff < 1e-4
    # Two or more sizes of every dynamic label were checked.
    labels = {lbl for axes in b.dynamic_axes.values() for lbl in axes.values()}
    for label in labels:
        seen = set()
        for case in report.parity:
            for inp, axes in b.dynamic_axes.items():
                if inp in case.input_shapes:
                    for axis, lbl in axes.items():
                        if lbl == label:
                            seen.add(case.input_shapes[inp][axis])
        assert len(seen) >= 2, (label, seen)
    for case in report.parity:
        assert case.ok and not case.error
        for d in case.outputs:
            assert d.max_abs_diff < 1e-4, (case.label, d)
    # The repository entry: config.pbtxt (Triton text format), model, report.
    cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == b.input_names
    assert [o.name for o in cfg.output] == b.output_names
    assert (repo / name / "1" / "model.onnx").stat().st_size == report.file_size_bytes
    saved = json.loads((repo / name / "export_report.json").read_text())
    assert saved["exporter"] == report.exporter and saved["parity_ok"] is True
    step_names = [s["name"] for s in saved["steps"]]
    assert step_names[:6] == ["eval", "export", "check", "simplify", "optimize", "parity"]


def test_config_dims(exported):
    repo, _ = exported
    cfg = text_format.Parse((repo / "bert" / "config.pbtxt").read_text(), pb.ModelConfig())
    by_name = {i.name: i for i in cfg.input}
    assert list(by_name["input_ids"].dims) == [-1]           # batch dropped, sequence variable
    assert by_name["input_ids"].data_type == DATATYPES["INT64"].config_enum
    outs = {o.name: list(o.dims) for o in cfg.output}
    assert outs == {"last_hidden_state": [-1, 64], "pooler_output": [64]}
    cfg = text_format.Parse((repo / "resnet50" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert list(cfg.input[0].dims) == [3, -1, -1]
    assert cfg.input[0].data_type == DATATYPES["FP32"].config_enum
    assert cfg.parameters["tensorwire.exporter"].string_value in ("dynamo", "torchscript")


def test_builtins_served_like_pytorch(exported):
    from serving import start_server

    repo, models = exported
    with start_server(repo) as server:
        for name in NAMES:
            b, _ = models[name]
            example = b.example_inputs if isinstance(b.example_inputs, dict) else {"input": b.example_inputs}
            for i, sizes in enumerate(SERVED_SIZES[name]):
                inputs = random_inputs(example, sizes, b.dynamic_axes, seed=100 + i)
                want = torch_reference(b.module, inputs, keywords=isinstance(b.example_inputs, dict))
                got = infer_grpc(server.address, name, inputs, b.output_names)
                for o, w, g in zip(b.output_names, want, got):
                    assert g.shape == w.shape, (name, sizes, o)
                    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4, err_msg=f"{name} {sizes} {o}")
