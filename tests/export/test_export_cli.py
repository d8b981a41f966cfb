"""`tensorwire export` end to end: a user's module file exported by the CLI is served with PyTorch's numbers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tensorwire.export import cli
from tensorwire.export.testing import infer_grpc

pytest.importorskip("torch")
FACTORY = Path(__file__).parents[1] / "fixtures" / "export_factory.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorwire")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_factory_module_exported_by_cli_is_served_like_pytorch(tmp_path):
    import torch
    from serving import start_server

    repo = tmp_path / "models"
    cmd = [sys.executable, "-m", "tensorwire", "export", "--factory", f"{FACTORY}:make_model",
           "--input", "input_ids:2x16:int64:0..99", "--input", "attention_mask:2x16:int64:0..1",
           "--dynamic", "input_ids:0:batch", "--dynamic", "input_ids:1:sequence",
           "--dynamic", "attention_mask:0:batch", "--dynamic", "attention_mask:1:sequence",
           "--output", "logits", "--name", "tiny", "--model-repository", str(repo)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("export", "check", "simplify", "optimize", "parity", "write"):
        assert f"  {step}" in out
    assert "nodes      exported" in out and "parity     rtol=0.001 atol=0.0001: PASS" in out
    assert "sequence=8" in out and "batch=1" in out and "file size" in out and "timings" in out
    report = json.loads((repo / "tiny" / "export_report.json").read_text())
    assert report["parity_ok"] and report["exporter"] in ("dynamo", "torchscript")

    sys.path.insert(0, str(FACTORY.parent))
    try:
        from export_factory import make_model
    finally:
        sys.path.pop(0)
    model = make_model().eval()   # same seed, same weights as the CLI's
    rng = np.random.default_rng(3)
    with start_server(repo) as server:
        for batch, seq in ((1, 5), (3, 16), (8, 40)):
            ids = rng.integers(0, 100, (batch, seq), dtype=np.int64)
            mask = np.ones((batch, seq), dtype=np.int64)
            mask[0, seq // 2:] = 0
            with torch.inference_mode():
                want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            (got,) = infer_grpc(server.address, "tiny", {"input_ids": ids, "attention_mask": mask}, ["logits"])
            assert got.shape == (batch, 4)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_builtin_through_cli_in_process(tmp_path, capsys):
    args = _parser().parse_args(["export", "mlp", "--model-repository", str(tmp_path), "--max-batch-size", "4",
                                 "--parity-shape", "batch=3"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "model mlp version 1" in out and "batch=3" in out and "PASS" in out
    assert (tmp_path / "mlp" / "1" / "model.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["export"], "either a built-in"),
    (["export", "--factory", f"{FACTORY}:make_model"], "needs at least one --input"),
    (["export", "--factory", f"{FACTORY}:make_model", "--input", "x:2x3:int64:5..1"], "LOW <= HIGH"),
    (["export", "--factory", f"{FACTORY}:make_model", "--input", "x:2by3:float32"], "shape must be"),
    (["export", "--factory", f"{FACTORY}:make_model", "--input", "x:2x3:complex7"], "unknown dtype"),
    (["export", "--factory", f"{FACTORY}:nope", "--input", "x:2x3:float32"], "has no function 'nope'"),
    (["export", "mlp", "--dynamic", "input:zero:batch"], "expected NAME:AXIS:LABEL"),
])
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    args = _parser().parse_args([*argv, "--model-repository", str(tmp_path)])
    assert cli.run(args) == 2
    assert message in capsys.readouterr().err


def test_parse_input():
    from tensorwire.export.inputs import InputArg, parse_input

    assert parse_input("input_ids:1x128:int64") == InputArg("input_ids", [1, 128], "int64", None, "")
    assert parse_input("pixels:2x3x8x8:fp32:-1..1") == InputArg("pixels", [2, 3, 8, 8], "float32", (-1, 1), "")
    assert parse_input("pixels=x:1x3:fp32").parameter == "x"


def test_import_without_torch_names_the_extra():
    """A serving host has no torch: importing works, exporting says what to install."""
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'onnxsim', 'transformers'): sys.modules[m] = None\n"
        "import tensorwire.export as e\n"
        "try:\n"
        "    e.export_model(object(), None, name='x', repository='/nonexistent')\n"
        "except e.ExportError as exc:\n"
        "    print('ERR', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "tensorwire[export]"' in proc.stdout and "'torch'" in proc.stdout
