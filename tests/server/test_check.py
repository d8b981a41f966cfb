"""`tensorwire check`: a good repository passes; each broken-repository case the loading tests cover
(test_lifecycle, test_repository, test_security) makes it exit non-zero and name the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from models import ADD_SUB_CONFIG, add_sub_model, identity_model, write_model
from onnx import TensorProto


def _check(repo, *extra):
    """The command as CI runs it: a process of its own, its exit status."""
    return subprocess.run([sys.executable, "-m", "tensorwire", "check", "--model-repository", str(repo), *extra],
                          capture_output=True, text=True, timeout=300)


def _check_here(repo, capsys) -> tuple[int, str]:
    """The same command in this process (the broken cases: no interpreter start per case)."""
    from tensorwire.cli import main

    code = main(["check", "--model-repository", str(repo)])
    return code, capsys.readouterr().out


def _not_onnx(repo):
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")


def _config_disagrees_with_graph(repo):
    wrong = ADD_SUB_CONFIG.replace('name: "add_sub"', 'name: "broken"').replace(
        "INPUT1\" data_type: TYPE_FP32", "INPUT1\" data_type: TYPE_INT64")
    write_model(repo, "broken", add_sub_model(), wrong)


def _config_not_utf8(repo):
    write_model(repo, "broken", add_sub_model(), None)
    (repo / "broken" / "config.pbtxt").write_bytes(b"max_batch_size: 8 # \xff\xfe not UTF-8\n")


def _over_a_server_bound(repo):
    write_model(repo, "broken", add_sub_model(), ADD_SUB_CONFIG.replace('"add_sub"', '"broken"').replace(
        "count: 1", "count: 150"))


def _no_version_directory(repo):
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text("max_batch_size: 8\n")


def _version_without_model_file(repo):
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text("max_batch_size: 8\n")


BROKEN = [_not_onnx, _config_disagrees_with_graph, _config_not_utf8, _over_a_server_bound, _no_version_directory,
          _version_without_model_file]


def test_a_good_repository_passes_with_a_warm_up(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    write_model(repo, "ident", identity_model(TensorProto.FLOAT), "max_batch_size: 8\n")
    proc = _check(repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warm-up inference ran" in proc.stdout and "2 model(s) passed" in proc.stdout
    rows = json.loads(_check(repo, "--json").stdout.split("\ntensorwire check")[0])
    assert {r["model"]: r["ok"] for r in rows} == {"add_sub": True, "ident": True}


@pytest.mark.parametrize("breakage", BROKEN, ids=[b.__name__.lstrip("_") for b in BROKEN])
def test_each_broken_case_fails_the_check(tmp_path, breakage, capsys):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    breakage(repo)
    code, out = _check_here(repo, capsys)
    assert code == 1, out
    assert "1 of 2 model(s) failed: broken" in out
    assert any(line.startswith("broken ") and "FAILED" in line for line in out.splitlines())


def test_an_empty_repository_fails(tmp_path):
    (tmp_path / "models").mkdir()
    assert _check(tmp_path / "models").returncode == 1
