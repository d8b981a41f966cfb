"""tensorwire.server.allocator: after keep_large_blocks(), a large block comes from the heap, not mmap,
and stays in the heap once freed.

Checked in a fresh interpreter through glibc's own accounting (mallinfo2: hblks counts blocks served
by mmap, fordblks the free bytes kept in the arena).
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from tensorwire.server.allocator import keep_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert keep_large_blocks() is True
before = libc.mallinfo2().hblks
block = libc.malloc(8 * 1024 * 1024)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(mmapped, libc.mallinfo2().fordblks >= 8 * 1024 * 1024)  # kept free in the arena, not trimmed
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(),
                    reason="malloc tuning and its check need glibc >= 2.33 (mallinfo2)")
def test_large_blocks_come_from_the_heap_once_tuned():
    def probe(mode: str) -> tuple[int, bool]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        mmapped, kept = out.stdout.split()
        return int(mmapped), kept == "True"

    assert probe("default") == (1, False)  # glibc's default: an 8 MiB block is its own mmap, unmapped on free
    assert probe("tuned") == (0, True)


THREAD_PROBE = r"""
import ctypes, threading
from pathlib import Path
from tensorwire.server.allocator import keep_large_blocks, thread_arena_trimmer

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_mib():
    status = Path("/proc/self/status").read_text()
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:"))) // 1024

assert keep_large_blocks() is True
trim = thread_arena_trimmer()
figures = []

def serve_a_burst():  # a thread of its own, so its blocks are in an arena of its own, as a poller's are
    blocks = [libc.malloc(16 << 20) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, 16 << 20)
    for block in blocks:
        libc.free(block)
    figures.append(rss_mib())
    libc.malloc_trim(0)
    figures.append(rss_mib())
    trim()
    figures.append(rss_mib())

thread = threading.Thread(target=serve_a_burst)
thread.start()
thread.join()
print(*figures)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena trim is glibc's (mallopt, malloc_trim)")
def test_a_thread_gives_its_arenas_free_top_back():
    """48 MiB freed by a thread stay in its arena's top (under the raised trim threshold, and malloc_trim does
    not reach a thread arena's top); the thread's own trim gives them back."""
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE], capture_output=True, text=True, check=True)
    freed, after_malloc_trim, after_own_trim = map(int, out.stdout.split())
    assert after_malloc_trim - after_own_trim >= 40, out.stdout
    assert freed - after_own_trim >= 40, out.stdout
