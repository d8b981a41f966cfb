"""Scheduler invariants that need exact ordering, with runners that block on events (the server tests cover
the same schedulers behind real ONNX Runtime sessions)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tensorwire.errors import DeadlineExceeded
from tensorwire.server.call import ANY_CALLER, Call
from tensorwire.server.scheduler import DirectScheduler, DynamicBatcher
from tensorwire.server.statistics import ModelStatistics
from tensorwire.server.validation import PreparedRequest


def _prep(value: float) -> PreparedRequest:
    return PreparedRequest({"x": np.full((1, 4), value, np.float32)}, ["y"], 1, True, 0)


def test_expired_request_in_a_running_batch_waits_for_the_batch():
    """Its feeds may sit in its scratch buffers: its caller must not return while the batch still reads them,
    even when its deadline passes during the run."""
    started = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    finished: list[float] = []

    def runner(feeds, names):
        batch = len(finished)
        started[batch].set()
        release[batch].wait(30)
        finished.append(time.monotonic())
        return [feeds["x"] * 2]

    batcher = DynamicBatcher("m", [runner], ModelStatistics(), 8, [], 0, 16)
    outcome: dict = {}

    def second() -> None:
        try:
            batcher.execute(_prep(2.0), Call(deadline=deadline))
        except DeadlineExceeded:
            outcome["raised"] = time.monotonic()

    try:
        first = threading.Thread(target=lambda: batcher.execute(_prep(1.0), ANY_CALLER))
        first.start()
        assert started[0].wait(30)  # the first batch runs, alone
        deadline = time.monotonic() + 3.0
        waiter = threading.Thread(target=second)
        waiter.start()
        release[0].set()
        assert started[1].wait(30)  # the second request's batch starts before its deadline
        while time.monotonic() <= deadline:  # and its deadline passes while the batch runs
            time.sleep(0.05)
        release[1].set()
        waiter.join(30)
        first.join(30)
        assert len(finished) == 2 and outcome["raised"] >= finished[1]
    finally:
        batcher.close()


def test_results_go_back_to_their_callers():
    batcher = DynamicBatcher("m", [lambda feeds, names: [feeds["x"] + 1]], ModelStatistics(), 8, [], 20_000, 16)
    out: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        out[i] = batcher.execute(_prep(float(i)), ANY_CALLER).outputs[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    for i in range(12):
        np.testing.assert_array_equal(out[i], np.full((1, 4), i + 1, np.float32))


def test_direct_scheduler_deadlines_and_instances_go_back():
    """A caller waiting for the only instance gives up at its deadline without running; a deadline already
    past never runs; the instance is free again afterwards."""
    release, started = threading.Event(), threading.Event()
    calls: list[float] = []

    def runner(feeds, names):
        calls.append(float(feeds["x"][0, 0]))
        if len(calls) == 1:
            started.set()
            release.wait(10)
        return [feeds["x"] * 2]

    sched = DirectScheduler("m", [runner], ModelStatistics())
    holder = threading.Thread(target=lambda: sched.execute(_prep(1.0), ANY_CALLER))
    holder.start()
    assert started.wait(10)  # the instance is busy until released
    with pytest.raises(DeadlineExceeded, match="waited for model 'm'"):
        sched.execute(_prep(2.0), Call(deadline=time.monotonic() + 0.05))
    release.set()
    holder.join(10)
    with pytest.raises(DeadlineExceeded):
        sched.execute(_prep(3.0), Call(deadline=time.monotonic() - 1))
    out = sched.execute(_prep(4.0), ANY_CALLER).outputs[0]
    assert calls == [1.0, 4.0] and out[0, 0] == 8.0
