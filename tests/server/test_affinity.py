"""--cpu-affinity: CPU lists, the pinned server process (every thread), worker slices, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import add_sub_model, write_model
from serving import start_server

from tensorwire.server.affinity import parse_cpu_list, share_for_worker

ALLOWED = sorted(os.sched_getaffinity(0))


def test_cpu_lists():
    assert parse_cpu_list("1") == [1]
    assert parse_cpu_list("3, 0-1,1") == [0, 1, 3]
    for bad in ("x", "2-1", "-1", "1-"):
        with pytest.raises(ValueError, match="CPU list"):
            parse_cpu_list(bad)


def test_workers_get_their_own_slice_when_there_are_enough():
    assert [share_for_worker([0, 1, 2, 3], i, 2) for i in range(2)] == [[0, 2], [1, 3]]
    assert share_for_worker([1], 1, 2) == [1]  # fewer CPUs than workers: all share them


def _threads_allowed(pid: int) -> set[str]:
    return {line.split(":", 1)[1].strip()
            for task in Path(f"/proc/{pid}/task").iterdir()
            for line in (task / "status").read_text().splitlines() if line.startswith("Cpus_allowed_list")}


def test_pinned_server_runs_every_thread_on_its_cpu_and_sizes_ort_to_it(tmp_path):
    cpu = ALLOWED[0]
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), "max_batch_size: 8\n")
    with start_server(repo, "--cpu-affinity", str(cpu)) as s:
        assert os.sched_getaffinity(s.process.pid) == {cpu}
        assert _threads_allowed(s.process.pid) == {str(cpu)}  # grpcio's and ORT's threads too
        assert f"cpu affinity: {cpu}" in s.log()
        c = grpcclient.InferenceServerClient(s.address)
        cfg = c.get_model_config("add_sub", as_json=True)["config"]
        assert cfg["parameters"]["intra_op_thread_count"]["string_value"] == "1"  # one usable CPU
        a = np.ones((1, 16), np.float32)
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        np.testing.assert_array_equal(c.infer("add_sub", inputs).as_numpy("OUTPUT0"), 2 * a)
        c.close()


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to give each worker its own")
def test_each_worker_is_pinned_to_its_own_cpu(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), "max_batch_size: 8\n")
    first, second = ALLOWED[:2]
    with start_server(repo, "--workers", "2", "--cpu-affinity", f"{first},{second}") as s:
        assert "with 2 worker processes" in s.log()
    log = s.log()
    assert f"[worker 0] tensorwire.affinity: cpu affinity: {first}" in log
    assert f"[worker 1] tensorwire.affinity: cpu affinity: {second}" in log


def test_cpus_the_process_may_not_use_are_refused_before_starting(tmp_path):
    missing = max(ALLOWED) + 1
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(tmp_path),
                          "--cpu-affinity", str(missing)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"CPU(s) {missing} are not available to this process" in out.stderr
