"""The README's first command runs `tensorwire demo`: export, serve, call, measure, stop."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "demo", "--repository", str(tmp_path / "repo"),
                          "--requests", "30"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert (tmp_path / "repo" / "mlp" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "mlp" / "config.pbtxt").is_file()
    assert re.search(r"vs PyTorch max \|diff\| [0-9.e+-]+ \(OK\)", text), text
    for label in ("tensorwire ModelInfer", "in-process ONNX Runtime", "bare grpcio echo"):
        assert re.search(re.escape(label) + r"[^\n]*?p50 \d+\.\d+ ms\s+p99 \d+\.\d+ ms", text), text
    assert "SIGTERM -> server exited with code 0" in text
