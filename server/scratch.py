"""Per-thread scratch buffers for the one copy the hot path makes: realigning a misaligned input view, or
reading an input out of a shared-memory region.

A fresh 600 KB allocation per request costs page faults and zero-filling, several times the copy itself
into warm memory (the copy's cost: bench/results/fastpath/alignment.md, "copy alone"). Each
RPC handler thread serves one request at a time, and a request's feeds are dead once its response is
encoded, so a buffer owned by the thread can be reused by that thread's next request. (The batcher keeps
that true for a request whose deadline passes while its batch runs: its thread waits for the batch.)
Buffers are bounded: inputs above ``MAX_SCRATCH_BYTES`` get a plain copy.
"""

from __future__ import annotations

import threading

import numpy as np

MAX_SCRATCH_BYTES = 16 * 1024 * 1024

_local = threading.local()


def thread_buffer(nbytes: int, slot: int) -> np.ndarray:
    """``nbytes`` (uint8, 16-byte aligned) of this thread's scratch buffer number ``slot`` (one per input of a
    request); a fresh array above ``MAX_SCRATCH_BYTES``. Also where inputs read from shared memory land."""
    if nbytes > MAX_SCRATCH_BYTES:
        return np.empty(nbytes, np.uint8)
    buffers: list = getattr(_local, "buffers", None) or []
    _local.buffers = buffers
    while len(buffers) <= slot:
        buffers.append(np.empty(0, np.uint8))
    if buffers[slot].nbytes < nbytes:
        buffers[slot] = np.empty(max(nbytes, 4096), np.uint8)  # numpy allocations are 16-byte aligned
    return buffers[slot][:nbytes]


def aligned_copy(arr: np.ndarray, slot: int) -> np.ndarray:
    """``arr`` copied into this thread's scratch buffer number ``slot`` (one per input of a request)."""
    if arr.nbytes > MAX_SCRATCH_BYTES:
        return arr.copy()
    out = thread_buffer(arr.nbytes, slot)
    # As bytes: numpy's copy loop for a misaligned typed source is slower than a plain memcpy (measured when
    # the hot path was built; `tensorwire bench alignment` times the copy).
    np.copyto(out, arr.reshape(-1).view(np.uint8))
    return out.view(arr.dtype).reshape(arr.shape)
