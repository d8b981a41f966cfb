"""Keep glibc malloc from handing large request buffers back to the kernel after every request.

grpcio allocates each received message (and the ``bytes`` it gives the handler) with malloc. glibc
serves blocks above its mmap threshold (dynamic, from 128 KiB) with fresh mmaps and trims an arena's
free top above its trim threshold, so a 600 KB request costs page faults and page zeroing on every
call. Raising both thresholds keeps those blocks in the arenas for the next request (a measured p50 win
for a 3x224x224 FP32 request: `tensorwire bench fastpath --server-arg=--no-malloc-tuning` re-measures it).
What this retains is bounded by ``TRIM_THRESHOLD_BYTES`` per arena. Only on glibc; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import logging
import sys

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
