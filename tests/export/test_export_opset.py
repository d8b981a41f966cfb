"""The exporter's own opset by default; a lower one falls back, with a note, when it cannot be had."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tensorwire.export import ExportError, export_model
from tensorwire.export.testing import infer_grpc

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("transformers")
FACTORY = Path(__file__).parents[1] / "fixtures" / "export_models.py"
GPT2_ARGS = ["--input", "input_ids:2x16:int64:0..95", "--input", "attention_mask:2x16:int64",
             "--dynamic", "input_ids:0:batch", "--dynamic", "input_ids:1:sequence",
             "--dynamic", "attention_mask:0:batch", "--dynamic", "attention_mask:1:sequence"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tensorwire", "export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _gpt2():
    sys.path.insert(0, str(FACTORY.parent))
    try:
        from export_models import make_gpt2
    finally:
        sys.path.pop(0)
    return make_gpt2()


@pytest.fixture(scope="module")
def gpt2_repo(tmp_path_factory) -> Path:
    """The GPT-2-style model exported twice by the CLI: at default settings, and asked for opset 17."""
    repo = tmp_path_factory.mktemp("gpt2") / "models"
    for name, extra in (("gpt2", []), ("gpt2_op17", ["--opset", "17"])):
        proc = _cli("--factory", f"{FACTORY}:make_gpt2", *GPT2_ARGS, "--name", name, "--model-repository",
                    str(repo), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (repo / f"{name}.log").write_text(proc.stdout)
    return repo


@pytest.mark.slow
def test_gpt2_exports_at_default_settings(gpt2_repo):
    report = json.loads((gpt2_repo / "gpt2" / "export_report.json").read_text())
    assert report["exporter"] == "dynamo" and report["parity_ok"]
    native = onnx.load(gpt2_repo / "gpt2" / "1" / "model.onnx").opset_import
    assert report["opset"] >= 18 and report["opset_note"] == ""
    assert not any("opset" in w for w in report["warnings"]), report["warnings"]
    assert any(o.domain in ("", "ai.onnx") and o.version == report["opset"] for o in native)
    assert "Split" in report["ops_exported"], "the fused qkv projection is split in the graph"
    # parity at 2+ values of every dynamic axis
    seen = {"batch": set(), "sequence": set()}
    for case in report["parity"]:
        batch, seq = case["input_shapes"]["input_ids"]
        seen["batch"].add(batch)
        seen["sequence"].add(seq)
    assert len(seen["batch"]) >= 2 and len(seen["sequence"]) >= 2, seen


@pytest.mark.slow
def test_gpt2_opset17_falls_back_with_a_one_line_note(gpt2_repo):
    report = json.loads((gpt2_repo / "gpt2_op17" / "export_report.json").read_text())
    assert report["parity_ok"] and report["opset"] >= 18
    note = report["opset_note"]
    assert "opset 17" in note and "Split" in note and "\n" not in note, note
    assert f"serving the exporter's opset {report['opset']}" in note
    assert note in (gpt2_repo / "gpt2_op17.log").read_text()


@pytest.mark.slow
def test_gpt2_served_answers_like_pytorch(gpt2_repo):
    from serving import start_server

    model = _gpt2()
    rng = np.random.default_rng(5)
    with start_server(gpt2_repo) as server:
        for name in ("gpt2", "gpt2_op17"):
            for batch, seq in ((1, 5), (3, 16), (8, 40)):
                ids = rng.integers(0, 96, (batch, seq), dtype=np.int64)
                mask = np.ones((batch, seq), dtype=np.int64)
                with torch.inference_mode():
                    want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
                (got,) = infer_grpc(server.address, name, {"input_ids": ids, "attention_mask": mask}, ["logits"])
                assert got.shape == (batch, seq, 96)
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


class FusedQKV(torch.nn.Module):
    """The pattern that breaks opset 17: one projection split three ways (Split with num_outputs at 18+)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).split(8, dim=-1)
        return q * k + v


def test_strict_opset_fails_with_the_precise_reason(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ExportError) as info:
        export_model(FusedQKV().eval(), torch.randn(2, 8), name="qkv", repository=tmp_path, opset=17,
                     strict_opset=True, exporter="dynamo")
    msg = str(info.value)
    assert "opset 17 was required" in msg and "Split" in msg and "Leave the opset out" in msg
    assert not (tmp_path / "qkv").exists()


def test_converted_graph_failing_the_checker_is_named():
    """What torch's own down-conversion used to leave: Split's opset-18 num_outputs in an opset-17 graph."""
    from onnx import TensorProto, helper

    from tensorwire.export import graph

    node = helper.make_node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    why = graph.converted_problem(model, lambda m: [])
    assert why.startswith("fails onnx.checker") and "num_outputs" in why
