"""--input bound to forward() by name, sensible example values, what will be served, --help."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from tensorwire.export import ExportError, export_model
from tensorwire.export import cli as export_cli
from tensorwire.export.inputs import INT_DEFAULT_RANGE, InputArg, example_inputs, parse_input

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
FIXTURES = Path(__file__).parents[1] / "fixtures"
MODELS = FIXTURES / "export_models.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorwire")
    export_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def _export(tmp_path, *argv: str) -> int:
    args = _parser().parse_args(["export", *argv, "--model-repository", str(tmp_path), "--no-optimize",
                                 "--no-simplify"])
    return export_cli.run(args)


def _fixture(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_models_fixture", MODELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def test_swapped_inputs_are_bound_by_name(tmp_path, capsys):
    """forward(x, mask) given --input mask first: the served `mask` must feed `mask`, not `x`."""
    rc = _export(tmp_path, "--factory", f"{MODELS}:make_scale_by_mask", "--input", "mask:2x8:float32",
                 "--input", "x:2x8:float32", "--name", "swapped")
    assert rc == 0, capsys.readouterr().err
    model = _fixture("make_scale_by_mask").eval()
    sess = ort.InferenceSession(str(tmp_path / "swapped" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["mask", "x"]
    rng = np.random.default_rng(0)
    x, mask = (rng.standard_normal((3, 8)).astype(np.float32) for _ in range(2))
    (got,) = sess.run(None, {"mask": mask, "x": x})
    with torch.inference_mode():
        want = model(x=torch.from_numpy(x), mask=torch.from_numpy(mask)).numpy()
        swapped = model(x=torch.from_numpy(mask), mask=torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, swapped, atol=1e-3)


def test_python_tuple_with_parameter_names_is_bound_by_name(tmp_path):
    model = _fixture("make_scale_by_mask").eval()
    x, mask = torch.randn(2, 8), torch.randn(2, 8)
    report = export_model(model, (mask, x), input_names=["mask", "x"], name="m", repository=tmp_path,
                          simplify=False, optimize=False)
    sess = ort.InferenceSession(report.model_path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"mask": mask.numpy(), "x": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x=x, mask=mask).numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_name_is_refused_with_the_signature(tmp_path, capsys):
    rc = _export(tmp_path, "--factory", f"{MODELS}:make_one_input", "--input", "pixel_values:2x8:float32")
    err = capsys.readouterr().err
    assert rc == 1 and "forward(x: torch.Tensor)" in err and "pixel_values" in err
    assert "SERVED=PARAM" in err and "Traceback" not in err
    assert not (tmp_path / "make_one_input").exists()


def test_missing_required_parameter_is_refused(tmp_path, capsys):
    rc = _export(tmp_path, "--factory", f"{MODELS}:make_scale_by_mask", "--input", "x:2x8:float32")
    err = capsys.readouterr().err
    assert rc == 1 and "missing a required argument: 'mask'" in err and "forward(x: torch.Tensor, mask" in err


def test_reordered_dict_names_are_refused(tmp_path):
    model = _fixture("make_scale_by_mask").eval()
    with pytest.raises(ExportError, match="reorders the example dict's keys"):
        export_model(model, {"x": torch.randn(2, 8), "mask": torch.randn(2, 8)}, input_names=["mask", "x"],
                     name="m", repository=tmp_path)


def test_serve_a_parameter_under_another_name(tmp_path, capsys):
    rc = _export(tmp_path, "--factory", f"{MODELS}:make_one_input", "--input", "pixel_values=x:2x8:float32",
                 "--name", "renamed")
    assert rc == 0, capsys.readouterr().err
    sess = ort.InferenceSession(str(tmp_path / "renamed" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert parse_input("pixel_values=x:2x8:float32") == InputArg("pixel_values", [2, 8], "float32", None, "x")


def test_wrong_dtype_names_the_flag_without_a_traceback(tmp_path, capsys):
    rc = _export(tmp_path, "--factory", f"{MODELS}:make_token_model", "--input", "input_ids:2x8:float32")
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "input 'input_ids' is float32 but the module needs int64" in err
    assert "--input input_ids:2x8:int64" in err


def test_example_values_for_masks_ids_and_positions():
    specs = [parse_input(t) for t in ("attention_mask:2x6:int64", "token_type_ids:2x6:int64",
                                      "position_ids:2x6:int64", "input_ids:64x64:int64", "ids:2x3:int64:5..5")]
    mask, types, pos, ids, fixed = example_inputs(specs, seed=0)
    assert bool((mask == 1).all()) and bool((types == 0).all())
    assert pos.tolist() == [list(range(6))] * 2
    assert int(ids.min()) == INT_DEFAULT_RANGE[0] and int(ids.max()) == INT_DEFAULT_RANGE[1]
    assert bool((fixed == 5).all())


class MaskedBranch(torch.nn.Module):
    """A data-dependent branch (so parity fails) with a random 0/1 attention mask among the inputs."""

    def forward(self, x, attention_mask):
        if x.sum() > 0:
            return x * attention_mask
        return -x


def test_parity_failure_says_how_inputs_were_drawn(tmp_path):
    x = torch.rand(2, 8) + 0.1
    mask = torch.randint(0, 2, (2, 8))
    with pytest.raises(ExportError) as info:
        export_model(MaskedBranch().eval(), {"x": x, "attention_mask": mask}, name="b", repository=tmp_path)
    msg = str(info.value)
    assert "parity inputs were drawn at random" in msg
    assert "attention_mask: random integers in 0..1" in msg and "attention_mask:SHAPE:int64:1..1" in msg
    assert "LOW..HIGH" in msg


def test_summary_shows_the_served_signature_and_warns_on_a_fixed_sequence(tmp_path, capsys):
    rc = _export(tmp_path, "--factory", f"{FIXTURES / 'export_factory.py'}:make_model", "--input",
                 "input_ids:2x16:int64:0..99", "--input", "attention_mask:2x16:int64", "--name", "fixedseq")
    out = capsys.readouterr().out
    assert rc == 0
    assert "max batch 8" in out
    assert "input  input_ids" in out and "[batch 1..8, 16 fixed]" in out
    assert "output output" in out and "[batch 1..8, 4 fixed]" in out
    assert "warning    'input_ids' axis 1 is fixed at 16" in out and "--dynamic input_ids:1:sequence" in out


def test_help_describes_every_flag_with_its_default():
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["export"]
    text = sub.format_help()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings or action.dest
    assert text.count("(default:") >= len(sub._actions) - 2    # every flag but help and the positional
    assert "--model-repository DIR" in text and "(default: model_repository)" in text
    assert "(default: 8)" in text
    assert parser.parse_args(["export", "mlp", "--model-repository", "r"]).repository == "r"
