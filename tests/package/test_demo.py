"""The README's first command runs `tensorwire demo`: export, serve, call, measure, stop."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "demo", "--model-repository", str(tmp_path / "repo"),
                          "--requests", "30"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert (tmp_path / "repo" / "mlp" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "mlp" / "config.pbtxt").is_file()
    assert re.search(r"vs PyTorch max \|diff\| [0-9.e+-]+ \(OK\)", text), text
    for label in ("tensorwire ModelInfer", "in-process ONNX Runtime", "bare grpcio echo"):
        assert re.search(re.escape(label) + r"[^\n]*?p50 \d+\.\d+ ms\s+p99 \d+\.\d+ ms", text), text
    assert "SIGTERM -> server exited with code 0" in text


def test_demo_and_overhead_accept_the_old_repository_flag():
    """`--model-repository` is the one name across commands; `--repository` still works for old scripts."""
    from pathlib import Path

    from tensorwire.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--model-repository", "r"]).model_repository == Path("r")
    assert parser.parse_args(["bench", "overhead", "--model-repository", "r"]).model_repository == Path("r")
