"""Re-exporting writes the next version; --version N refuses to replace N without --overwrite."""

from __future__ import annotations

import argparse

import pytest

from tensorwire.export import ExportError, export_model
from tensorwire.export import cli as export_cli

torch = pytest.importorskip("torch")


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 4).eval()


def _quick(**kw):
    return dict(simplify=False, optimize=False, **kw)


def test_next_version_by_default_and_explicit_version_refused_without_overwrite(tmp_path):
    model, x = _linear(), torch.randn(2, 8)
    r1 = export_model(model, x, name="m", repository=tmp_path, **_quick())
    r2 = export_model(model, x, name="m", repository=tmp_path, **_quick())
    assert (r1.version, r2.version) == (1, 2)
    assert r2.model_path.endswith("/m/2/model.onnx") and (tmp_path / "m" / "1" / "model.onnx").exists()
    before = (tmp_path / "m" / "1" / "model.onnx").read_bytes()
    with pytest.raises(ExportError, match=r"exists: pass overwrite=True .* to write version 3") as info:
        export_model(model, x, name="m", repository=tmp_path, version=1, **_quick())
    assert info.value.report.steps == [], "refused before any export step ran"
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == before
    r3 = export_model(torch.nn.Linear(8, 4).eval(), x, name="m", repository=tmp_path, version=1, overwrite=True,
                      **_quick())
    assert r3.version == 1 and (tmp_path / "m" / "1" / "model.onnx").read_bytes() != before
    r4 = export_model(model, x, name="m", repository=tmp_path, version=7, **_quick())
    assert r4.version == 7 and sorted(p.name for p in (tmp_path / "m").iterdir() if p.is_dir()) == ["1", "2", "7"]


def test_cli_version_flags_and_report(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tensorwire")
    export_cli.add_parser(parser.add_subparsers(dest="command"))

    def run(*extra: str) -> int:
        return export_cli.run(parser.parse_args(["export", "mlp", "--model-repository", str(tmp_path),
                                                 "--no-optimize", "--no-simplify", *extra]))

    assert run() == 0 and "model mlp version 1 ->" in capsys.readouterr().out
    assert run() == 0 and "model mlp version 2 ->" in capsys.readouterr().out
    assert run("--version", "2") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert run("--version", "2", "--overwrite") == 0 and "model mlp version 2 ->" in capsys.readouterr().out


def test_training_mode_is_documented_behaviour(tmp_path):
    """docs/export.md: switched to eval() with a warning, kept in the report, handed back in training mode."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5)).train()
    with pytest.warns(UserWarning, match="training mode: switched to eval"):
        report = export_model(model, torch.randn(2, 8), name="t", repository=tmp_path, **_quick())
    assert model.training and any("training mode" in w for w in report.warnings)
    doc = (__import__("pathlib").Path(__file__).parents[2] / "docs" / "export.md").read_text()
    assert "switched to `eval()`" in doc and "handed back in training mode" in doc
