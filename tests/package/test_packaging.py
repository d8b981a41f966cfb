"""What a user installs is what we test: the built wheel, in a fresh environment, serves and answers.

The rest of the suite runs against the checkout's own install; this builds the sdist and the wheel the
way a release would (``python -m build``: the wheel is built from the sdist, so a file missing from the
sdist fails here too), checks the wheel carries the compiled parts, installs it with only the ``cpu``
extra into a new venv (no torch, no onnx, no matplotlib), and serves a model from that venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorwire.launcher import tensorwire_server

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list, timeout: float, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    command = " ".join(map(str, cmd))
    assert out.returncode == 0, f"{command} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _double_repository(root: Path) -> Path:
    """A one-node model, y = x + x (FP32 [-1, 4]), and its config: all the server needs."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (root / "double" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "double" / "1" / "model.onnx"))
    (root / "double" / "config.pbtxt").write_text('name: "double"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    return root


CALL = textwrap.dedent("""
    import json, sys, numpy as np, tensorwire
    from tensorwire.client import InferenceClient
    with InferenceClient(sys.argv[1], timeout=60) as client:
        y = client.infer("double", {"x": np.arange(8, dtype=np.float32).reshape(2, 4)})["y"]
    print(tensorwire.__file__)
    print(json.dumps(y.tolist()))
""")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # cwd: not the checkout, whose setuptools build/ folder would shadow the `build` package for `-m build`
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT], timeout=1200, cwd=out)
    return out


@pytest.mark.slow
def test_sdist_and_wheel_carry_the_sources_and_the_compiled_parts(dist):
    (sdist,) = dist.glob("tensorwire-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"setup.py", "pyproject.toml", "fastpath/_wire.pyx", "fastpath/_mapped.pyx", "proto/grpc_service.proto",
            "proto/model_config.proto"} <= names
    (wheel,) = dist.glob("tensorwire-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for ext in ("_wire", "_mapped"):
        assert any(n.startswith(f"tensorwire/fastpath/{ext}") and n.endswith(".so") for n in names), sorted(names)
    assert "tensorwire/proto/inference.binpb" in names
    assert {"tensorwire/launcher.py", "tensorwire/echo.py", "tensorwire/bench/cli.py"} <= names


@pytest.mark.slow
def test_wheel_with_the_cpu_extra_serves_from_a_fresh_venv(dist, tmp_path):
    (wheel,) = dist.glob("tensorwire-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    python, env = venv / "bin" / "python", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([python, "-m", "pip", "install", "-q", f"{wheel}[cpu]"], timeout=1200, env=env)
    missing = subprocess.run([python, "-c", "import torch"], capture_output=True, env=env, cwd=tmp_path)
    assert missing.returncode != 0, "the cpu extra must not bring torch"
    for args in (["--help"], ["bench", "--help"], ["bench", "compare", "--help"]):
        _run([venv / "bin" / "tensorwire", *args], timeout=120, env=env, cwd=tmp_path)
    codec = _run([python, "-c", "from tensorwire.fastpath import load_codec; print(load_codec('ext').name)"],
                 timeout=60, env=env, cwd=tmp_path)
    assert codec.stdout.strip() == "ext"

    repo = _double_repository(tmp_path / "models")
    with tensorwire_server(repo, python=python, env=env) as server:
        deadline = time.monotonic() + 60
        while True:
            answer = subprocess.run([python, "-c", CALL, server.address], capture_output=True, text=True,
                                    timeout=120, env=env, cwd=tmp_path)
            if answer.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the model may still be loading: ModelInfer answers UNAVAILABLE until it is
        assert answer.returncode == 0, answer.stderr + server.log()
    installed_at, result = answer.stdout.splitlines()
    assert Path(installed_at).resolve().is_relative_to(venv.resolve())   # the wheel's copy, not the checkout
    np.testing.assert_array_equal(np.array(json.loads(result), np.float32),
                                  2 * np.arange(8, dtype=np.float32).reshape(2, 4))


def test_make_demo_installs_only_when_the_sources_changed(tmp_path):
    """`make demo` reinstalls when a source, pyproject.toml or setup.py is newer than the last install."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    stamp = venv / ".installed-demo"

    def plan() -> str:
        return _run(["make", "-n", "demo", f"VENV={venv}"], timeout=60, cwd=ROOT).stdout

    assert "pip install" in plan()                      # never installed
    stamp.touch()
    assert "pip install" not in plan() and "tensorwire demo" in plan()
    os.utime(stamp, (0, 0))                             # older than every source file
    assert "pip install" in plan()
