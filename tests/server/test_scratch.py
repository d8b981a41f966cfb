"""The scratch pool: buffers reused across requests, never shared while taken, bounded, and given back to the
system when idle."""

from __future__ import annotations

import time

import numpy as np

from tensorwire.server.scratch import SMALLEST_CLASS, ScratchPool, aligned_copy


def _misaligned(values: np.ndarray) -> np.ndarray:
    raw = bytearray(b"\0" + values.tobytes())
    view = np.frombuffer(memoryview(raw)[1:], values.dtype).reshape(values.shape)
    assert not view.flags.aligned
    return view


def test_copy_is_aligned_and_equal():
    a = _misaligned(np.arange(12, dtype=np.float32).reshape(3, 4))
    out = aligned_copy(a, ScratchPool().take(a.nbytes))
    assert out.flags.aligned and out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, a)


def test_a_buffer_is_reused_only_after_it_is_given_back():
    pool = ScratchPool()
    first = pool.take(1000)
    second = pool.take(1000)
    assert not np.shares_memory(first, second)  # both taken: two buffers
    pool.give_back([first])
    third = pool.take(2000)  # the same size class: the buffer given back
    assert np.shares_memory(first, third)
    assert first.ctypes.data % 4096 == 0  # page-aligned: fit for any dtype and for SIMD loads


def test_the_ceiling_bounds_what_the_pool_holds():
    pool = ScratchPool(max_bytes=2 * SMALLEST_CLASS)
    held = [pool.take(SMALLEST_CLASS) for _ in range(2)]
    extra = pool.take(SMALLEST_CLASS)  # over the ceiling: a buffer of its own, not the pool's
    assert pool.held_bytes == 2 * SMALLEST_CLASS
    pool.give_back([*held, extra])
    assert sum(len(f) for f in pool._free.values()) == 2  # the extra one was not kept


def test_idle_buffers_are_dropped_by_the_sweep():
    pool = ScratchPool(idle_s=0.05)
    buf = pool.take(SMALLEST_CLASS * 4)
    pool.give_back([buf])
    assert pool.sweep() == 0  # just used
    time.sleep(0.1)
    assert pool.sweep() == SMALLEST_CLASS * 4
    assert pool.held_bytes == 0
    assert not np.shares_memory(pool.take(SMALLEST_CLASS * 4), buf)  # a fresh buffer, not the dropped one
