"""Scheduler invariants that need exact ordering, with runners that block on events (the server tests cover
the same schedulers behind real ONNX Runtime sessions)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tensorwire.errors import Cancelled, DeadlineExceeded, Unavailable
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


def test_a_submitted_request_waits_for_a_busy_instance_without_a_thread():
    """With a transport that parks (Call.park), a request that finds the only instance busy is queued and
    submit returns; the instance, once free, is handed to it (first come, first served) and it runs on the
    thread park gives it. A caller that leaves while queued gets its error at once; close answers the rest."""
    release, started = threading.Event(), threading.Event()
    ran: list[float] = []

    def runner(feeds, names):
        ran.append(float(feeds["x"][0, 0]))
        if len(ran) == 1:
            started.set()
            release.wait(30)
        return [feeds["x"] * 2]

    sched = DirectScheduler("m", [runner], ModelStatistics())
    parked: list = []
    answers: dict[float, tuple] = {}
    ends: dict[float, list] = {}

    def call(value: float) -> Call:
        ends[value] = []
        return Call(park=parked.append, on_end=lambda f, v=value: ends[v].append(f) or True)

    def then(value: float):
        return lambda execution, error: answers.__setitem__(value, (execution, error))

    holder = threading.Thread(target=sched.submit, args=(_prep(1.0), call(1.0), then(1.0)))
    holder.start()
    assert started.wait(10)
    for v in (2.0, 3.0, 4.0):
        sched.submit(_prep(v), call(v), then(v))  # returns at once: the instance is busy
    assert parked == [] and set(answers) == set()
    ends[3.0][0]()  # the caller of 3.0 goes away while queued
    assert isinstance(answers[3.0][1], Cancelled)
    release.set()
    holder.join(10)
    assert answers[1.0][0].outputs[0][0, 0] == 2.0 and len(parked) == 1  # handed to 2.0, the oldest
    parked.pop()()  # the transport runs it: 2.0 runs, then hands the instance to 4.0
    assert answers[2.0][0].outputs[0][0, 0] == 4.0 and len(parked) == 1
    sched.submit(_prep(5.0), call(5.0), then(5.0))  # queued behind 4.0, which holds the instance
    sched.close()
    assert isinstance(answers[5.0][1], Unavailable) and "unloaded" in str(answers[5.0][1])
    parked.pop()()
    assert answers[4.0][0].outputs[0][0, 0] == 8.0 and ran == [1.0, 2.0, 4.0]
    with pytest.raises(Unavailable):
        sched.submit(_prep(6.0), call(6.0), then(6.0))
