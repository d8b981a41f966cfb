"""NVIDIA Triton 2.51 as a peer in `bench peers`: its C++ gRPC front end, its Python backend running ORT.

The ``tritonserver`` binary and the Python backend come from NVIDIA's ``nvidia-pytriton`` wheel on PyPI
(``bash bench/triton_env.sh DIR`` unpacks it and puts the stub for this Python beside the backend). Each
model of a tensorwire repository becomes a Python-backend model whose ``model.py`` runs the same ONNX file
in an ONNX Runtime session with ``timing.cpu_session``'s options, the same as every other peer: the
figures compare front ends, not sessions. Triton runs the backend in a stub process per instance, so the
server's CPU is the process tree's (``procstat.local_server_pids`` follows the children).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tensorwire.bench.procnet import free_port
from tensorwire.launcher import stop_process

DEFAULT_TRITON = Path("/work/triton/pytriton/tritonserver")
STARTUP_TIMEOUT_S = 120.0

MODEL_PY = '''\
"""Written by tensorwire's bench/peer_triton.py: the model runs in ONNX Runtime, as in the other peers."""
import sys

sys.path[:0] = [p for p in {paths!r} if p not in sys.path]  # the stub ignores PYTHONPATH

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from tensorwire.bench.timing import cpu_session  # noqa: E402


class TritonPythonModel:
    """Tensors cross by DLPack both ways: the stub's numpy path, built against numpy 1.x, reads and writes
    wrong or empty data under numpy 2."""

    def initialize(self, args):
        self.session = cpu_session({onnx!r}, {threads}, spinning={spinning})
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        answers = []
        for request in requests:
            feeds = {{n: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, n)) for n in self.inputs}}
            values = self.session.run(None, feeds)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(n, v)
                                                       for n, v in zip(self.outputs, values)]))
        return answers
'''


def _tensors(onnx_path: Path) -> tuple[list, list]:
    """(inputs, outputs) of an ONNX file as (name, dims without the batch dimension)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def dims(value) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim][1:]

    return ([(v.name, dims(v)) for v in graph.input if v.name not in initializers],
            [(v.name, dims(v)) for v in graph.output])


def _config(name: str, max_batch_size: int, inputs: list, outputs: list) -> str:
    def tensors(items: list) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: {json.dumps(d)} }}' for n, d in items)

    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
            f"input [ {tensors(inputs)} ]\noutput [ {tensors(outputs)} ]\n"
            "instance_group [ { count: 1 kind: KIND_CPU } ]\n")


def write_repository(source: Path, target: Path, intra_op_threads: int, spinning: bool) -> Path:
    """Triton's repository for every ``NAME/1/model.onnx`` of the tensorwire repository ``source``:
    one instance, no dynamic batching, ``max_batch_size`` as the source's config says."""
    for directory in sorted(source.iterdir()):
        onnx_path = directory / "1" / "model.onnx"
        if not onnx_path.exists():
            continue
        text = (directory / "config.pbtxt").read_text() if (directory / "config.pbtxt").exists() else ""
        found = re.search(r"max_batch_size:\s*(\d+)", text)
        (target / directory.name / "1").mkdir(parents=True)
        inputs, outputs = _tensors(onnx_path)
        (target / directory.name / "config.pbtxt").write_text(
            _config(directory.name, int(found.group(1)) if found else 0, inputs, outputs))
        (target / directory.name / "1" / "model.py").write_text(MODEL_PY.format(
            paths=[p for p in sys.path if p], onnx=str(onnx_path.resolve()), threads=intra_op_threads,
            spinning=spinning))
    return target


def check(triton: Path) -> str | None:
    """Why ``triton`` cannot serve this Python's backend models, or None when it can."""
    stub = triton / "backends" / "python" / "triton_python_backend_stub"
    if not (triton / "bin" / "tritonserver").exists():
        return f"{triton}/bin/tritonserver not found (bash bench/triton_env.sh builds it)"
    if not stub.exists():
        return f"{stub} not found (bash bench/triton_env.sh copies the stub for this Python there)"
    return None


@contextlib.contextmanager
def serve(triton: Path, repository: Path, log_path: Path, prefix: list[str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tritonserver`` on a free loopback gRPC port (HTTP and metrics off); (address, process) once ready."""
    import tritonclient.grpc as tc

    port = free_port()
    command = [*prefix, str(triton / "bin" / "tritonserver"), "--model-repository", str(repository),
               "--backend-directory", str(triton / "backends"), "--grpc-port", str(port),
               "--grpc-address", "127.0.0.1", "--allow-http", "false", "--allow-metrics", "false",
               "--log-verbose", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with tc.InferenceServerClient(address) as client:
            while not _ready(client):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tritonserver did not start (exit {proc.poll()}):\n{log_path.read_text()}")
                time.sleep(0.2)
        yield address, proc
    finally:
        stop_process(proc)


def _ready(client) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:  # not listening yet: tritonclient raises its own error types
        return False

