"""The practitioner's pitfalls, each caught by the export tool rather than in production."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tensorwire.export import ExportError, export_model

torch = pytest.importorskip("torch")


class DropoutNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                        torch.nn.Linear(32, 4))

    def forward(self, x):
        return self.body(x)


class SignBranch(torch.nn.Module):
    """Data-dependent control flow: which layer runs depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = torch.nn.Linear(8, 8)
        self.neg = torch.nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.pos(x)
        return self.neg(x)


BRANCH_LINE = inspect.getsourcelines(SignBranch.forward)[1] + 1   # the `if x.sum() > 0:` line


@torch.library.custom_op("twtest::fancy_gelu", mutates_args=())
def fancy_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


@fancy_gelu.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return fancy_gelu(self.fc(x))


class BakedBatch(torch.nn.Module):
    """int(x.shape[0]) turns the batch into a Python number: a trace bakes the example's batch in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).reshape(int(x.shape[0]), 2, 4)


def test_training_mode_with_dropout_is_forced_to_eval(tmp_path):
    torch.manual_seed(0)
    model = DropoutNet().train()
    x = torch.randn(4, 16)
    # In training mode the module is not even deterministic: what would a graph of it mean?
    assert not torch.allclose(model(x), model(x))
    with pytest.warns(UserWarning, match="training mode"):
        report = export_model(model, x, name="dropout", repository=tmp_path)
    assert model.training, "the caller's module is handed back in the mode it came in"
    assert any("training mode" in w for w in report.warnings)
    assert report.steps[0].name == "eval" and "training mode" in report.steps[0].detail
    assert report.parity_ok and report.parity_max_abs_diff < 1e-5
    assert "Dropout" not in report.ops_exported
    import onnxruntime as ort

    sess = ort.InferenceSession(report.model_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_data_dependent_branch_is_caught(tmp_path):
    torch.manual_seed(0)
    model = SignBranch().eval()
    x = torch.rand(2, 8) + 0.1            # positive: the trace takes the `pos` branch
    with pytest.raises(ExportError) as info:
        export_model(model, x, name="branch", repository=tmp_path)
    err, report = info.value, info.value.report
    # torch.export refuses the data-dependent `if`; the tracer takes one branch and warns.
    dynamo = [a for a in report.exporter_attempts if a["exporter"] == "dynamo"]
    assert dynamo and not dynamo[0]["ok"] and "data-dependent" in dynamo[0]["reason"]
    assert report.exporter == "torchscript"
    assert any(n.lineno == BRANCH_LINE and "x.sum() > 0" in n.source for n in report.tracer_warnings)
    assert f"test_export_pitfalls.py:{BRANCH_LINE}" in str(err)
    # The parity run on inputs that take the other branch shows the graph is wrong, with numbers.
    negated = next(c for c in report.parity if c.label == "probe: negated inputs")
    assert not negated.ok and negated.max_abs_diff > 1e-2
    assert "BAD" in str(err) and "max_abs=" in str(err)
    assert not (tmp_path / "branch").exists(), "a failed export writes nothing to the repository"


def test_untranslatable_operator_is_named(tmp_path):
    with pytest.raises(ExportError) as info:
        export_model(CustomOpNet().eval(), torch.randn(2, 8), name="custom", repository=tmp_path)
    msg = str(info.value)
    assert "cannot translate operator `twtest::fancy_gelu`" in msg
    assert "custom_translation_table" in msg and "register_custom_op_symbolic" in msg
    assert [a["ok"] for a in info.value.report.exporter_attempts] == [False, False]
    assert not (tmp_path / "custom").exists()


def test_untranslatable_operator_with_translation_exports(tmp_path):
    pytest.importorskip("onnxscript")
    from onnxscript import opset18 as op

    def fancy_gelu_onnx(x):  # the translation the error message asks for, in standard ONNX ops
        return op.Mul(x, op.Sigmoid(op.Mul(x, op.CastLike(op.Constant(value_float=1.702), x))))

    report = export_model(CustomOpNet().eval(), torch.randn(2, 8), name="custom", repository=tmp_path, opset=18,
                          custom_translation_table={torch.ops.twtest.fancy_gelu.default: fancy_gelu_onnx})
    assert report.exporter == "dynamo" and report.parity_ok


def test_static_batch_declared_is_caught(tmp_path):
    model = torch.nn.Linear(8, 4).eval()
    with pytest.raises(ExportError, match=r"static batch.*batch 2") as info:
        export_model(model, torch.randn(1, 8), name="static", repository=tmp_path, dynamic_axes={},
                     max_batch_size=8)
    assert "dynamic_axes={'input': {0: 'batch'}" in str(info.value)
    assert not (tmp_path / "static").exists()


def test_batch_baked_in_by_trace_is_caught(tmp_path):
    with pytest.raises(ExportError, match="dynamic-axes check") as info:
        export_model(BakedBatch().eval(), torch.randn(2, 8), name="baked", repository=tmp_path, exporter="torchscript")
    report = info.value.report
    failing = [c for c in report.parity if not c.ok]
    assert failing and all(c.error for c in failing)
    assert {c.label for c in failing} >= {"batch=1", "batch=8"}
    assert any("int(x.shape[0])" in n.source for n in report.tracer_warnings)


def test_static_model_without_batch_axis(tmp_path):
    """max_batch_size=0 is the honest way to serve a fixed-shape model: full dims in the config."""
    from google.protobuf import text_format

    from tensorwire import proto as pb

    report = export_model(torch.nn.Linear(8, 4).eval(), torch.randn(3, 8), name="fixed", repository=tmp_path,
                          max_batch_size=0)
    cfg = text_format.Parse((tmp_path / "fixed" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [3, 8] and list(cfg.output[0].dims) == [3, 4]
    assert [c.label for c in report.parity] == ["export shape"]
