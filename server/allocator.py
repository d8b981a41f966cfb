"""Keep glibc malloc from handing large request buffers back to the kernel after every request, and give the
memory back once a burst is over.

grpcio allocates each received message (and the ``bytes`` it gives the handler) with malloc. glibc
serves blocks above its mmap threshold (dynamic, from 128 KiB) with fresh mmaps and trims an arena's
free top above its trim threshold, so a 600 KB request costs page faults and page zeroing on every
call. Raising both thresholds keeps those blocks in the arenas for the next request (a measured p50 win
for a 3x224x224 FP32 request: bench/results/decisions/hot-path.md).
What the arenas keep between requests of a burst is given back when it ends: :class:`MemoryReleaser` calls
``malloc_trim`` once the server has been idle for a second after serving, and drops the scratch pool's idle
buffers (docs/resilience.md "Memory after a burst"). Only on glibc;
a no-op elsewhere.
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
    return ok


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class MemoryReleaser:
    """A thread that, every ``period_s``, drops the scratch pool's idle buffers and, when the server has served
    requests and then been idle for a whole period, returns malloc's free pages to the system. ``activity`` is
    the data plane's (requests started, requests finished)."""

    def __init__(self, scratch: ScratchPool, activity: Callable[[], tuple[int, int]], period_s: float = 1.0) -> None:
        self.scratch = scratch
        self.activity = activity
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
                self.trims += 1
                trimmed = started
            seen = started

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
