"""Model.infer in process, with fake schedulers standing in for ONNX Runtime: the one owner of a request
gives back what it held (scratch buffers, shared-memory leases) exactly when its execution is over, records
each failure under Triton's reason, and sends a request that reaches a retired version to its successor."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tensorwire import proto as pb
from tensorwire.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted
from tensorwire.proto.datatypes import DATATYPES
from tensorwire.proto.messages import InferRequest, InputTensor, RequestedOutput
from tensorwire.server.model import Model
from tensorwire.server.model_config import ModelSpec, TensorSpec
from tensorwire.server.scheduler import Execution
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.settings import ServerSettings
from tensorwire.server.shared_memory import SharedMemoryRegistry

N = 1 << 15  # elements of the input: a 128 KiB realigned copy comes from the scratch pool


def _spec() -> ModelSpec:
    return ModelSpec(name="m", max_batch_size=0, inputs=[TensorSpec("x", DATATYPES["FP32"], (N,))],
                     outputs=[TensorSpec("y", DATATYPES["FP32"], (N,))], config=pb.ModelConfig())


def _misaligned_request(value: float = 1.0) -> InferRequest:
    """x as raw bytes one byte into a buffer: the model must realign it into a scratch buffer."""
    data = memoryview(b"\x00" + np.full(N, value, np.float32).tobytes())[1:]
    return InferRequest(model_name="m", inputs=[InputTensor(name="x", datatype="FP32", shape=(N,))],
                        raw_input_contents=[data])


class FakeScheduler:
    """Runs ``step(prep)`` as the instance would, on the calling thread, and remembers what it saw."""

    def __init__(self, step) -> None:
        self.step, self.seen = step, []

    def execute(self, prep, call) -> Execution:
        self.seen.append(prep)
        return Execution(outputs=self.step(prep), batch_size=1)

    def close(self) -> None:
        pass


def _model(step, scratch: ScratchPool | None = None) -> Model:
    return Model(_spec(), "1", FakeScheduler(step), scratch=scratch or ScratchPool())


def _free_buffers(pool: ScratchPool) -> int:
    return sum(len(v) for v in pool._free.values())


def test_scratch_buffers_are_the_requests_until_its_execution_is_over():
    """server/scratch.py's rule: while the instance runs, the request's buffer is not in the pool (no other
    request can take it); once infer returns, on success and on failure, it is back."""
    pool = ScratchPool()
    during = []

    def run(prep):
        during.append((_free_buffers(pool), len(prep.scratch), float(prep.feeds["x"][0])))
        return [prep.feeds["x"] * 2]

    model = _model(run, pool)
    out = model.infer(_misaligned_request(3.0))
    assert during == [(0, 1, 3.0)] and _free_buffers(pool) == 1
    np.testing.assert_array_equal(out.outputs[0].data, np.full(N, 6.0, np.float32))

    def fail(prep):
        during.append((_free_buffers(pool), len(prep.scratch)))
        raise Internal("the runtime failed")

    with pytest.raises(Internal):
        _model(fail, pool).infer(_misaligned_request())
    assert during[-1] == (0, 1) and _free_buffers(pool) == 1  # reused, held while it ran, given back


@pytest.mark.parametrize(("error", "reason"), [
    (ResourceExhausted("queue full"), "REJECTED"), (DeadlineExceeded("late"), "CANCELED"),
    (Internal("ORT failed"), "BACKEND"), (RuntimeError("a bug"), "BACKEND"), (InvalidArgument("bad"), "OTHER")])
def test_each_failure_is_recorded_under_tritons_reason(error, reason):
    def fail(_prep):
        raise error

    model = _model(fail)
    with pytest.raises(type(error)):
        model.infer(_misaligned_request())
    stats = model.stats.snapshot()
    assert {r: n for r, n in stats["failures"].items() if n} == {reason: 1}
    assert stats["success"] == 0 and stats["pending"] == 0


def test_shared_memory_leases_end_with_the_request(tmp_path):
    """An input read from a region and an output written to one: both leases end when infer returns, also
    when the run fails, so an unregistered region's descriptor is closed by the last request using it."""
    key = f"/tw_model_test_{os.getpid()}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 2 * 4 * N)
    os.pwrite(fd, np.full(N, 2.0, np.float32).tobytes(), 0)
    regions = SharedMemoryRegistry(ServerSettings(allow_shared_memory=True))
    try:
        regions.register("r", key, 0, 2 * 4 * N)
        region = regions.status("r")[0]
        request = InferRequest(
            model_name="m", inputs=[InputTensor(name="x", datatype="FP32", shape=(N,), parameters={
                "shared_memory_region": "r", "shared_memory_byte_size": 4 * N})],
            outputs=[RequestedOutput(name="y", parameters={
                "shared_memory_region": "r", "shared_memory_byte_size": 4 * N, "shared_memory_offset": 4 * N})])
        leases = []
        model = _model(lambda prep: leases.append(region._leases) or [prep.feeds["x"] + 1])
        model.infer(request, regions=regions)
        assert leases == [1] and region._leases == 0  # the input's lease ended after the read; the output's held
        assert np.frombuffer(os.pread(fd, 4 * N, 4 * N), np.float32)[0] == 3.0

        def fail(_prep):
            raise Internal("the runtime failed")

        with pytest.raises(Internal):
            _model(fail).infer(request, regions=regions)
        assert region._leases == 0
    finally:
        regions.close()
        os.close(fd)
        os.unlink(f"/dev/shm{key}")


def test_a_retired_version_sends_requests_to_its_successor():
    """After a reload, a request that had already looked up the old version is served by the new one and
    counted there only; the old scheduler is closed once nothing is in flight."""
    old_runs, new_runs = [], []
    old, new = _model(lambda p: old_runs.append(1) or [p.feeds["x"]]), _model(lambda p: new_runs.append(1) or
                                                                              [p.feeds["x"] + 10])
    assert old.retire(lambda name, version: new, drain_s=5)
    out = old.infer(_misaligned_request(1.0))
    np.testing.assert_array_equal(out.outputs[0].data, np.full(N, 11.0, np.float32))
    assert not old_runs and new_runs == [1]
    assert old.stats.snapshot()["success"] == 0 and new.stats.snapshot()["success"] == 1


def test_retire_waits_for_the_request_in_flight():
    """A reload does not fail the request the old version is running: retire waits for it (drain_s)."""
    running, release = threading.Event(), threading.Event()

    def slow(prep):
        running.set()
        release.wait(30)
        return [prep.feeds["x"]]

    old = _model(slow)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(old.infer(_misaligned_request(4.0))))
    worker.start()
    assert running.wait(30)
    retired = []
    retiring = threading.Thread(target=lambda: retired.append(old.retire(lambda n, v: old, drain_s=60)))
    retiring.start()
    release.set()
    worker.join(30)
    retiring.join(30)
    assert retired == [True] and answers[0].outputs[0].data[0] == 4.0
