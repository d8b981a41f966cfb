"""Scratch buffers for the one copy the hot path makes: realigning a misaligned input view, or reading an input
out of a shared-memory region.

A fresh 600 KB allocation per request costs page faults and zero-filling, several times the copy itself into
warm memory (bench/results/decisions/alignment.md), so buffers are reused from request to request through one
pool per server process.

The rule, the only one: **a scratch buffer belongs to one request from the moment it is taken until that
request's execution is over** (its run ended, or it left the queue without running), whatever thread ends it;
then the model gives it back (``PreparedRequest.scratch``, ``Model``). Nothing else may hold a buffer: the
request's feeds are views of it, and ONNX Runtime reads them until the run ends.

The pool's memory has a ceiling (``--scratch-pool-mb``): a request that finds the pool at its ceiling gets a
plain allocation that dies with the request. Pooled buffers are anonymous memory maps, so a buffer the pool
drops (idle for ``idle_s``, swept by the server's memory releaser) goes back to the operating system at once
instead of staying in a malloc arena.
"""

from __future__ import annotations

import mmap
import threading
import time

import numpy as np

DEFAULT_MAX_BYTES = 128 << 20
SMALLEST_CLASS = 1 << 16  # buffers come in powers of two from 64 KiB: few classes, reused across sizes
LARGEST_CLASS = 16 << 20
IDLE_S = 2.0


def _size_class(nbytes: int) -> int:
    return max(SMALLEST_CLASS, 1 << (nbytes - 1).bit_length())


class ScratchPool:
    """Reusable page-aligned buffers, bounded in total bytes; ``take`` and ``give_back`` are thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, idle_s: float = IDLE_S) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.held_bytes = 0  # pooled buffers, free or taken
        self._free: dict[int, list[tuple[float, np.ndarray]]] = {}  # size class -> (last use, buffer)
        self._pooled: dict[int, np.ndarray] = {}  # id -> base array of every pooled buffer, free or taken
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """``nbytes`` of uint8 (page-aligned when pooled) that belong to the caller's request until ``give_back``."""
        if nbytes > LARGEST_CLASS:
            return np.empty(nbytes, np.uint8)
        size = _size_class(nbytes)
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()[1][:nbytes]
            if self.held_bytes + size > self.max_bytes:
                return np.empty(nbytes, np.uint8)  # over the ceiling: dies with the request
            self.held_bytes += size
        base = np.frombuffer(mmap.mmap(-1, size), np.uint8)
        with self._lock:
            self._pooled[id(base)] = base
        return base[:nbytes]

    def give_back(self, buffers: list[np.ndarray]) -> None:
        """Return what ``take`` gave; buffers that are not the pool's are left to die with their request."""
        now = time.monotonic()
        with self._lock:
            for buf in buffers:
                base = buf.base
                if base is not None and self._pooled.get(id(base)) is base:
                    self._free.setdefault(base.nbytes, []).append((now, base))

    def sweep(self) -> int:
        """Drop free buffers unused for ``idle_s`` (their memory goes back to the system); the bytes dropped."""
        cutoff = time.monotonic() - self.idle_s
        dropped = 0
        with self._lock:
            for size, free in self._free.items():
                idle = [base for used, base in free if used <= cutoff]
                if not idle:
                    continue
                self._free[size] = [(used, base) for used, base in free if used > cutoff]
                for base in idle:
                    del self._pooled[id(base)]
                dropped += size * len(idle)
            self.held_bytes -= dropped
        return dropped


def aligned_copy(arr: np.ndarray, into: np.ndarray) -> np.ndarray:
    """``arr`` copied into ``into`` (uint8, at least ``arr.nbytes``), viewed with ``arr``'s dtype and shape."""
    out = into[: arr.nbytes]
    # As bytes: numpy's copy loop for a misaligned typed source is slower than a plain memcpy
    # (bench/results/decisions/alignment.md).
    np.copyto(out, arr.reshape(-1).view(np.uint8))
    return out.view(arr.dtype).reshape(arr.shape)
