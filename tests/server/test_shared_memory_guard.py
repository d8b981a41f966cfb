"""The guarded copies in and out of a client's shared-memory object (fastpath/_mapped.pyx).

A client can shrink its object at any time; touching a mapped page past the new end raises SIGBUS. These
tests shrink real /dev/shm objects under a real mapping: a guarded copy must fail cleanly (many times
over), and a SIGBUS outside a guarded copy must still end the process as it would without the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

from tensorwire.errors import InvalidArgument
from tensorwire.fastpath import _mapped as mapped
from tensorwire.server import shared_memory
from tensorwire.server.settings import ServerSettings
from tensorwire.server.shared_memory import SharedMemoryRegistry

SIZE = 3 * 65536 + 100  # a few pages and a partial one


@pytest.fixture
def shm_object():
    key = f"tw_guard_{uuid.uuid4().hex[:12]}"
    fd = os.open(f"/dev/shm/{key}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, SIZE + 4096)
    try:
        yield key, fd
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm/{key}")


@pytest.fixture
def shm_fd(shm_object):
    return shm_object[1]


def test_guarded_copies_move_exact_bytes_at_any_offset(shm_fd):
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    os.pwrite(shm_fd, data.tobytes(), 4096 + 7)
    m = mapped.Mapping(shm_fd, 4096 + 7, SIZE)  # a region that starts inside a page
    assert m.object_size() == os.fstat(shm_fd).st_size == 4096 + 7 + SIZE  # the pwrite above grew it
    out = np.empty(SIZE, np.uint8)
    m.read_into(0, out)
    assert np.array_equal(out, data)
    part = np.empty(1000, np.uint8)
    m.read_into(SIZE - 1000, part)
    assert np.array_equal(part, data[-1000:])
    m.write_from(5, memoryview(b"tensorwire"))
    assert os.pread(shm_fd, 10, 4096 + 7 + 5) == b"tensorwire"
    with pytest.raises(ValueError, match="outside the region"):
        m.read_into(SIZE - 10, np.empty(11, np.uint8))
    with pytest.raises(ValueError, match="outside the region"):
        m.write_from(SIZE, memoryview(b"x"))
    m.close()
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.read_into(0, np.empty(1, np.uint8))


def test_a_shrunk_object_fails_the_copy_not_the_process(shm_fd):
    m = mapped.Mapping(shm_fd, 0, SIZE)
    out = np.empty(SIZE, np.uint8)
    m.read_into(0, out)
    os.ftruncate(shm_fd, 4096)  # pages past the first are gone: touching them raises SIGBUS
    assert m.object_size() == 4096  # the copies themselves do not check: the guard is what is tested here
    for _ in range(200):
        with pytest.raises(mapped.Shrunk):
            m.read_into(0, out)
        with pytest.raises(mapped.Shrunk):
            m.write_from(SIZE - 10, memoryview(b"0123456789"))
    m.read_into(0, out[:4096])  # what is still there reads as before
    assert mapped.guard_installed()
    os.ftruncate(shm_fd, SIZE)  # grown back: copies work again
    m.read_into(0, out)
    m.close()


_FOREIGN_FAULT = """
import mmap, os, sys
if sys.argv[1] == "faulthandler":
    import faulthandler
    faulthandler.enable()
from tensorwire.fastpath._mapped import Mapping
path = sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 65536)
guarded = Mapping(fd, 0, 65536)
plain = mmap.mmap(fd, 65536)
os.ftruncate(fd, 0)
os.unlink(path)
print("touching", flush=True)
plain[40000]
print("survived", flush=True)
"""


@pytest.mark.parametrize("before", ["default", "faulthandler"])
def test_a_fault_outside_a_guarded_copy_still_ends_the_process(before):
    """The handler only catches its own copies: numpy or ORT touching a truncated mapping must not be
    resumed with garbage. Whatever handled SIGBUS before (the default, or faulthandler) handles it."""
    path = f"/dev/shm/tw_foreign_{uuid.uuid4().hex[:12]}"
    done = subprocess.run([sys.executable, "-c", _FOREIGN_FAULT, before, path], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "touching"
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr[-400:])
    if before == "faulthandler":
        assert "Bus error" in done.stderr
    assert not os.path.exists(path)


@pytest.mark.parametrize("path", ["guarded", "preadv"])
def test_the_server_copies_through_the_guard_and_reports_a_shrink(shm_object, path, monkeypatch):
    """The registry's regions use the guarded mapping (or, without the extension, preadv/pwrite: same
    answers); a shrunk object is a clear INVALID_ARGUMENT for that request, never a write past its end, and
    the region works again once the object is whole."""
    if path == "preadv":
        monkeypatch.setattr(shared_memory, "Mapping", None)  # what a build without the extension does
    key, fd = shm_object
    registry = SharedMemoryRegistry(ServerSettings(model_repository=".", allow_shared_memory=True))
    registry.register("r", key, 4096, SIZE)
    try:
        region = registry.status("r")[0]
        assert isinstance(region.mapping, mapped.Mapping) if path == "guarded" else region.mapping is None
        os.pwrite(fd, b"abcdef", 4096 + 10)
        os.pwrite(fd, b"ghijkl", 4096 + 5000)
        assert region.read(10, 6).tobytes() == b"abcdef" and region.read(5000, 6).tobytes() == b"ghijkl"
        region.write(100, memoryview(b"out"))
        assert os.pread(fd, 3, 4096 + 100) == b"out"
        os.ftruncate(fd, 8192)
        with pytest.raises(InvalidArgument, match="now holds 8192 bytes.*made smaller after registration"):
            region.read(0, SIZE)
        with pytest.raises(InvalidArgument, match="made smaller after registration"):
            region.write(SIZE - 3, memoryview(b"out"))
        assert os.fstat(fd).st_size == 8192  # the refused write did not grow the client's object
        os.ftruncate(fd, SIZE + 4096)
        whole = region.read(0, SIZE)  # works again: what the object kept, and zeros where it was cut
        assert whole[10:16].tobytes() == b"abcdef" and whole[5000:5006].tobytes() == bytes(6)
    finally:
        registry.close()
