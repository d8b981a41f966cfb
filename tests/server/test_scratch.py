"""The realignment copy reuses one buffer per handler thread and input slot, and never shares it."""

from __future__ import annotations

import threading

import numpy as np

from tensorwire.server.scratch import MAX_SCRATCH_BYTES, aligned_copy


def _misaligned(values: np.ndarray) -> np.ndarray:
    raw = bytearray(b"\0" + values.tobytes())
    view = np.frombuffer(memoryview(raw)[1:], values.dtype).reshape(values.shape)
    assert not view.flags.aligned
    return view


def test_copy_is_aligned_equal_and_reused_per_thread_and_slot():
    a = _misaligned(np.arange(12, dtype=np.float32).reshape(3, 4))
    first = aligned_copy(a, 0)
    assert first.flags.aligned and first.shape == (3, 4)
    np.testing.assert_array_equal(first, a)
    second = aligned_copy(_misaligned(np.ones((2, 4), np.float32)), 0)
    assert np.shares_memory(first, second)  # same thread, same slot: the buffer is reused
    other_slot = aligned_copy(a, 1)
    assert not np.shares_memory(second, other_slot)

    seen: list[np.ndarray] = []
    t = threading.Thread(target=lambda: seen.append(aligned_copy(a, 0)))
    t.start()
    t.join()
    assert not np.shares_memory(seen[0], second)  # another thread never gets this thread's buffer
    np.testing.assert_array_equal(seen[0], a)


def test_large_inputs_are_plain_copies():
    big = _misaligned(np.zeros(MAX_SCRATCH_BYTES // 4 + 1, np.float32))
    one, two = aligned_copy(big, 0), aligned_copy(big, 0)
    assert one.flags.aligned and not np.shares_memory(one, two)
