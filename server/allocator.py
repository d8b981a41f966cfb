"""Keep glibc malloc from handing large request buffers back to the kernel after every request, and give the
memory back once a burst is over.

grpcio allocates each received message (and the ``bytes`` it gives the handler) with malloc. glibc
serves blocks above its mmap threshold (dynamic, from 128 KiB) with fresh mmaps and trims an arena's
free top above its trim threshold, so a 600 KB request costs page faults and page zeroing on every
call. Raising both thresholds keeps those blocks in the arenas for the next request (a measured p50 win
for a 3x224x224 FP32 request: bench/results/decisions/hot-path.md).
What the arenas keep between requests of a burst is given back when it ends: :class:`MemoryReleaser` calls
``malloc_trim`` once the server has been idle for a second after serving, has the threads that served the burst
trim their own arenas (:func:`thread_arena_trimmer`), and drops the scratch pool's idle buffers
(docs/resilience.md "Memory after a burst"). Only on glibc; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Callable

from tensorwire.server.scratch import ScratchPool

log = logging.getLogger("tensorwire.allocator")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's own ceiling for its dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit hosts).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
_tuned = False  # keep_large_blocks() raised the thresholds in this process


def keep_large_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    # Setting either one turns off glibc's dynamic adjustment of both, so both are set.
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("malloc tuning refused by the C library; large requests will page-fault on each call")
    global _tuned
    _tuned = ok
    return ok


def _libc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    libc = _libc()
    return None if libc is None else lambda: libc.malloc_trim(0)


# A block past glibc's FASTBIN_CONSOLIDATION_THRESHOLD (64 KiB): freeing one makes glibc trim its arena's top.
_TRIGGER_BYTES = 256 * 1024
_trimming = threading.Lock()  # the lowered threshold is process-wide: one trim at a time restores it


def thread_arena_trimmer() -> Callable[[], None] | None:
    """A function that gives back the free top of the calling thread's malloc arena, or None (not glibc, or
    :func:`keep_large_blocks` did not raise the threshold: glibc's own then trims on free).

    ``malloc_trim`` releases the free blocks inside every arena, and of the arenas' tops only the main one's; a
    thread's arena gives its top back on a free past the trim threshold, which :func:`keep_large_blocks` raises
    to a whole arena heap. So the thread lowers the threshold for one free of its own (which trims its arena's
    top), then restores it. Run by a thread once the burst it served is over, never per request: the memory it
    gives back is what the next large request would page-fault in again.
    """
    libc = _libc() if _tuned else None
    if libc is None:
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    low = 2 * _TRIGGER_BYTES

    def trim() -> None:
        with _trimming:
            if libc.mallopt(M_TRIM_THRESHOLD, low) != 1:
                return
            try:
                libc.free(libc.malloc(_TRIGGER_BYTES))
            finally:
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)

    return trim


class MemoryReleaser:
    """A thread that, every ``period_s``, drops the scratch pool's idle buffers and, when the server has served
    requests and then been idle for a whole period, returns malloc's free pages to the system and calls each of
    ``burst_over`` (a transport asking the threads that served to trim their arenas). ``activity`` is the data
    plane's (requests started, requests finished)."""

    def __init__(self, scratch: ScratchPool, activity: Callable[[], tuple[int, int]], period_s: float = 1.0,
                 burst_over: tuple[Callable[[], None], ...] = ()) -> None:
        self.scratch = scratch
        self.activity = activity
        self.burst_over = burst_over
        self.period_s = period_s
        self.trims = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensorwire-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seen = trimmed = self.activity()[0]
        while not self._stop.wait(self.period_s):
            self.scratch.sweep()
            started, finished = self.activity()
            if started == seen == finished and started != trimmed and self._trim is not None:
                self._trim()  # idle for a whole period after serving: a burst is over
                for hook in self.burst_over:
                    hook()
                self.trims += 1
                trimmed = started
            seen = started

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
