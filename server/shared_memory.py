"""System shared memory (Triton's extension): the registry of regions a local client registered.

A region names part of a POSIX shared-memory object (``/dev/shm/<key>``) that the *client* created and
can shrink at any time. Touching a mapped page past a size the client has since cut (ftruncate) raises
SIGBUS, which kills a process by default. So no mapped client memory is ever handed to ONNX Runtime or
numpy: one copy each way, input bytes into a buffer of the server's, output bytes into the region. The
copies go through the region's guarded mapping (fastpath/_mapped.pyx: a SIGBUS inside a guarded copy
fails that copy, not the process), or, where that extension is not built, through ``os.preadv`` and
``os.pwrite``. The object's size is checked before each copy; a shrunk object is a clear error for that
request while the server goes on serving (docs/shared-memory.md).

Every name a client sends is checked before any file-system call: a key is a plain POSIX shm name (an
optional leading '/', then letters, digits, '_', '.', '-'), opened with O_NOFOLLOW inside /dev/shm, and
must be a regular file large enough for the region. Messages quote the client's key, never a host path.
Regions are bounded in number and total bytes (--limit-shared-memory-regions, --limit-shared-memory-mb).

Unregistering a region in use is safe: requests hold a lease on the region, and the descriptor is closed
when the last lease ends; the name is free again at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tensorwire.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tensorwire.proto.datatypes import Datatype
from tensorwire.proto.messages import InferRequest
from tensorwire.proto.tensors import array_from_raw, element_count, format_shape
from tensorwire.server.limits import quoted
from tensorwire.server.request_limits import RequestLimits, check_bytes_elements, check_shared_memory_budget
from tensorwire.server.settings import ServerSettings

if TYPE_CHECKING:
    from tensorwire.server.model_config import ModelSpec

SHM_DIR = "/dev/shm"
MAX_KEY_LENGTH = 255  # NAME_MAX: the longest file name /dev/shm can hold
MAX_REGION_NAME_LENGTH = 256
_KEY = re.compile(rf"/?([A-Za-z0-9_.-]{{1,{MAX_KEY_LENGTH}}})")
# The gRPC metadata key (HTTP header) a client's shared-memory token travels in, on every call that names a region.
TOKEN_HEADER = "tensorwire-shm-token"
DISABLED = ("system shared memory is disabled on this server; start it with --allow-shared-memory to use it "
            "(see docs/shared-memory.md)")
CUDA_UNSUPPORTED = ("CUDA shared memory is not supported by this server: tensorwire runs its models on ONNX "
                    "Runtime without CUDA IPC; use system shared memory (--allow-shared-memory) or send tensors "
                    "in the request (see docs/shared-memory.md)")
# The three tensor parameters of Triton's extension, on inputs and requested outputs.
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
SHM_PARAMETERS = (REGION, OFFSET, BYTE_SIZE)
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

try:  # the guarded mapped copies; preadv/pwrite where the extension is not built
    from tensorwire.fastpath._mapped import Mapping, Shrunk
except ImportError:  # pragma: no cover - exercised by a build without the extension
    Mapping = Shrunk = None


def object_file_name(key: str) -> str:
    """The file name of POSIX shm object ``key`` in /dev/shm; INVALID_ARGUMENT for anything but a plain name."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or m.group(1) in (".", ".."):
        raise InvalidArgument(
            f"shared memory key {quoted(key)} is not a POSIX shared memory name: use an optional leading '/' and then "
            f"1 to {MAX_KEY_LENGTH} letters, digits, '_', '.' or '-' (not '.' or '..')")
    return m.group(1)


@dataclass(eq=False)
class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the object ``key``, open as ``fd``.

    ``_leases`` counts requests using it; ``_registered`` goes False on unregister, and the descriptor is
    closed when both say nobody needs it any more.
    """

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    # The guarded mapping the copies go through (None: preadv/pwrite on ``fd``).
    mapping: object = None
    # SHA-256 of the token its registering client presented (None: registered without one).
    token_digest: bytes | None = None
    _leases: int = 0
    _registered: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        """End one lease (``SharedMemoryRegistry.acquire``)."""
        with self._lock:
            self._leases -= 1
            close = self._leases == 0 and not self._registered
        if close:
            self._close()

    def _unregister(self) -> None:
        with self._lock:
            self._registered = False
            close = self._leases == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
        os.close(self.fd)

    # -- data ------------------------------------------------------------------------------------------
    def check_span(self, offset: int, byte_size: int) -> None:
        """Triton's bounds check of a request's offset and size within the region."""
        if offset < 0 or offset >= self.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{self.name}'")
        if byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidArgument(f"Invalid offset + byte size for shared memory region: '{self.name}'")

    def read(self, offset: int, byte_size: int, into: np.ndarray | None = None) -> np.ndarray:
        """``byte_size`` bytes at ``offset`` of the region, copied (guarded copy, or preadv) into ``into`` (a uint8
        array of that size) or a fresh array."""
        self.check_span(offset, byte_size)
        buf = np.empty(byte_size, np.uint8) if into is None else into
        try:
            return self._read(offset, byte_size, buf)
        except OSError as exc:
            raise InvalidArgument(f"shared memory region '{self.name}': cannot be read ({exc.strerror})") from None

    def _read(self, offset: int, byte_size: int, buf: np.ndarray) -> np.ndarray:
        self._check_object(offset, byte_size)
        if self.mapping is not None:
            try:
                self.mapping.read_into(offset, buf)
            except Shrunk:
                raise self._shrunk(offset, byte_size) from None
            return buf
        view = memoryview(buf)
        start, got = self.offset + offset, 0
        while got < byte_size:
            n = os.preadv(self.fd, [view[got:]], start + got)
            if n <= 0:
                raise InvalidArgument(
                    f"shared memory region '{self.name}': could read only {got} of {byte_size} bytes at offset "
                    f"{offset}; the object behind key {quoted(self.key)} was made smaller after registration")
            got += n
        return buf

    def _check_object(self, offset: int, size: int) -> None:
        """The object still holds [offset, offset + size) of the region: a clear error before any copy (a
        shrink during the copy is caught by the copy itself). fstat in C through the mapping when there is one
        (os.fstat builds a stat_result: ~3.5 us)."""
        actual = self.mapping.object_size() if self.mapping is not None else os.fstat(self.fd).st_size
        if actual < self.offset + offset + size:
            raise self._shrunk(offset, size, actual)

    def _shrunk(self, offset: int, size: int, actual: int | None = None) -> InvalidArgument:
        holds = "" if actual is None else f"now holds {actual} bytes, "
        return InvalidArgument(
            f"shared memory region '{self.name}': the object behind key {quoted(self.key)} {holds}too few for "
            f"{size} bytes at offset {offset}; it was made smaller after registration")

    def write(self, offset: int, data) -> None:
        """Write ``data`` (a buffer) at ``offset`` of the region (guarded copy, or pwrite), inside
        [offset, offset + byte_size) only."""
        size = memoryview(data).nbytes
        self.check_span(offset, size)
        try:
            self._write(offset, memoryview(data).cast("B"), size)
        except OSError as exc:
            raise InvalidArgument(f"shared memory region '{self.name}': cannot be written ({exc.strerror})") from None

    def _write(self, offset: int, data: memoryview, size: int) -> None:
        self._check_object(offset, size)  # pwrite past the end would grow the client's object
        if self.mapping is not None:
            try:
                self.mapping.write_from(offset, data)
            except Shrunk:
                raise self._shrunk(offset, size) from None
            return
        done = 0
        while done < size:
            done += os.pwrite(self.fd, data[done:], self.offset + offset + done)


def token_digest(token: str | None) -> bytes | None:
    return None if token is None else hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class SharedMemoryRegistry:
    """The regions registered with this server process, bounded in number and total bytes.

    With ``--shared-memory-require-token`` a region belongs to the token its client registered it with:
    every other call (status, unregister, a request reading or writing it) sees it only with the same token,
    and anyone else is told what an unknown region gets. ``seen_by(token)`` is that caller's view."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = settings.allow_shared_memory
        self.require_token = settings.shared_memory_require_token
        self.max_regions = settings.limit_shared_memory_regions
        self.max_bytes = int(settings.limit_shared_memory_mb * 2**20)
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def require_enabled(self) -> None:
        """UNAVAILABLE, saying how to enable it, when this server does not serve shared memory."""
        if not self.enabled:
            raise Unavailable(DISABLED)

    def seen_by(self, token: str | None) -> SharedMemoryRegistry | CallerRegions:
        """The regions as the caller presenting ``token`` may use them (all of them without the token rule)."""
        return CallerRegions(self, token) if self.require_token else self

    def _visible(self, region: Region | None, token: str | None) -> Region | None:
        if region is None or not self.require_token:
            return region
        digest = token_digest(token)
        return region if digest is not None and hmac.compare_digest(region.token_digest or b"", digest) else None

    def _check_token(self, token: str | None) -> None:
        if self.require_token and not token:
            raise InvalidArgument(
                f"this server requires a token on shared-memory calls (--shared-memory-require-token): send the "
                f"header '{TOKEN_HEADER}' with a secret of your choice on the registration and on every request "
                "that uses the region")

    def register(self, name: str, key: str, offset: int, byte_size: int, token: str | None = None) -> None:
        """Open the object ``key`` and record ``name``; every check before the object is kept open."""
        self.require_enabled()
        self._check_token(token)
        if not name or len(name) > MAX_REGION_NAME_LENGTH:
            raise InvalidArgument(f"shared memory region name {quoted(name)} must have 1 to "
                                  f"{MAX_REGION_NAME_LENGTH} characters")
        file_name = object_file_name(key)
        if offset < 0:  # HTTP's JSON can say so; gRPC's uint64 cannot
            raise InvalidArgument(f"failed to register shared memory region {quoted(name)}: invalid args "
                                  f"(offset {offset} is negative)")
        if byte_size <= 0:
            raise InvalidArgument(
                f"failed to register shared memory region {quoted(name)}: invalid args (byte_size is 0)")
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared memory region {quoted(name)} already in manager")
            self._check_count(name)  # a client at the bound on regions costs no open()
            fd = _open_object(key, file_name)
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidArgument(
                        f"failed to register shared memory region {quoted(name)}: invalid args (offset {offset} + "
                        f"byte_size {byte_size} is beyond the {size} bytes of the object {quoted(key)})")
                self._check_bytes(name, byte_size)
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd, _guarded_mapping(fd, offset, byte_size),
                                         token_digest(token) if self.require_token else None)

    def _check_count(self, name: str) -> None:
        if len(self._regions) >= self.max_regions:
            raise ResourceExhausted(
                f"failed to register shared memory region {quoted(name)}: {len(self._regions)} regions are "
                "registered, this server's bound (--limit-shared-memory-regions); unregister some first")

    def _check_bytes(self, name: str, byte_size: int) -> None:
        total = sum(r.byte_size for r in self._regions.values())
        if total + byte_size > self.max_bytes:
            raise ResourceExhausted(
                f"failed to register shared memory region {quoted(name)}: {byte_size} bytes more than the {total} "
                f"registered would exceed this server's bound of {self.max_bytes} bytes (--limit-shared-memory-mb)")

    def unregister(self, name: str = "", token: str | None = None) -> None:
        """Forget ``name`` (empty: every region the caller sees); an unknown name is not an error, as in Triton."""
        self.require_enabled()
        with self._lock:
            names = [name] if name else list(self._regions)
            gone = [self._regions.pop(n) for n in names if self._visible(self._regions.get(n), token)]
        for region in gone:
            region._unregister()

    def status(self, name: str = "", token: str | None = None) -> list[Region]:
        """The regions named (empty: all the caller sees), Triton's NOT_FOUND for an unknown name."""
        self.require_enabled()
        with self._lock:
            if not name:
                return [r for r in self._regions.values() if self._visible(r, token)]
            region = self._visible(self._regions.get(name), token)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: {quoted(name)}")
        return [region]

    def acquire(self, name: str, token: str | None = None) -> Region:
        """The region ``name`` with a lease: it stays open (even if unregistered meanwhile) until ``release``."""
        self.require_enabled()
        with self._lock:
            region = self._visible(self._regions.get(name), token)
            if region is not None:
                region._acquire()
        if region is None:
            raise NotFound(f"Unable to find shared memory region: {quoted(name)}")
        return region

    @contextmanager
    def lease(self, name: str, token: str | None = None) -> Iterator[Region]:
        """``acquire`` for the length of a block."""
        region = self.acquire(name, token)
        try:
            yield region
        finally:
            region.release()

    def close(self) -> None:
        """Unregister everything (server shutdown)."""
        if self.enabled:
            self.unregister()


class CallerRegions:
    """One caller's view of a registry under the token rule: the registry's calls with the caller's token."""

    def __init__(self, registry: SharedMemoryRegistry, token: str | None) -> None:
        self.registry, self.token, self.enabled = registry, token, registry.enabled

    def require_enabled(self) -> None:
        self.registry.require_enabled()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.registry.register(name, key, offset, byte_size, self.token)

    def unregister(self, name: str = "") -> None:
        self.registry.unregister(name, self.token)

    def status(self, name: str = "") -> list[Region]:
        return self.registry.status(name, self.token)

    def acquire(self, name: str) -> Region:
        return self.registry.acquire(name, self.token)

    def lease(self, name: str):
        return self.registry.lease(name, self.token)


# The registry of a caller that cannot use shared memory (in-process callers, tests): always disabled.
NO_REGIONS = SharedMemoryRegistry(ServerSettings())


def _guarded_mapping(fd: int, offset: int, byte_size: int):
    """The region mapped for guarded copies; None (preadv/pwrite) without the extension or if mmap fails."""
    if Mapping is None:
        return None
    try:
        return Mapping(fd, offset, byte_size)
    except OSError:
        return None


def _open_object(key: str, file_name: str) -> int:
    """The object's descriptor: O_NOFOLLOW inside /dev/shm, a regular file; Triton's message otherwise."""
    try:
        fd = os.open(os.path.join(SHM_DIR, file_name), _OPEN_FLAGS)
    except OSError:
        raise InvalidArgument(f"Unable to open shared memory region: '{key}'") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"Unable to open shared memory region: '{key}' (not a shared memory object)")
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- the request side: Triton's tensor parameters, inputs read from regions, outputs written into them ------
@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where a tensor's bytes are: ``byte_size`` bytes at ``offset`` of the region named ``region``."""

    region: str
    offset: int
    byte_size: int


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shm_ref(params: dict, tensor: str) -> ShmRef | None:
    """The shared-memory parameters of a tensor, checked as Triton's ParseSharedMemoryParams (its messages);
    None when the tensor names no region."""
    has = REGION in params
    region = params.get(REGION)
    if has and not isinstance(region, str):
        raise InvalidArgument(
            f"invalid value type for '{REGION}' parameter for tensor '{tensor}', expected string_param.")
    values = {}
    for key in (OFFSET, BYTE_SIZE):
        if key not in params:
            continue
        if not has:
            raise InvalidArgument(f"'{key}' can not be specified without '{REGION}' parameter for tensor '{tensor}'")
        if not _is_int(params[key]):
            raise InvalidArgument(
                f"invalid value type for '{key}' parameter for tensor '{tensor}', expected int64_param.")
        values[key] = params[key]
    if not has:
        return None
    if BYTE_SIZE not in values:
        raise InvalidArgument(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{tensor}'")
    if len(region) > MAX_REGION_NAME_LENGTH:
        raise NotFound(f"Unable to find shared memory region: {quoted(region)}")
    return ShmRef(region, values.get(OFFSET, 0), values[BYTE_SIZE])


def read_input(regions: SharedMemoryRegistry, ref: ShmRef, take: Callable[[int], np.ndarray]) -> np.ndarray:
    """An input's bytes, copied out of its region into a scratch buffer from ``take`` (server/scratch.py: the
    request holds it until its execution is over); the region is leased only while it is read."""
    with regions.lease(ref.region) as region:
        region.check_span(ref.offset, ref.byte_size)  # before the buffer is taken: a hostile size costs nothing
        return region.read(ref.offset, ref.byte_size, take(ref.byte_size))


def shm_input_array(request: InferRequest, i: int, ref: ShmRef, dt: Datatype, limits: RequestLimits,
                    budget: list[int], regions: SharedMemoryRegistry, take: Callable[[int], np.ndarray]) -> np.ndarray:
    """Input ``i``'s data read from its shared-memory region, held to the same checks as raw bytes; sizes
    are checked before a byte is read, and all of a request's shared-memory inputs together are bounded by
    the largest message (``budget``)."""
    inp = request.inputs[i]
    where = f"input '{inp.name}'"
    regions.require_enabled()
    if inp.contents:
        raise InvalidArgument(f"unexpected 'content' provided when using shared memory for input tensor "
                              f"'{inp.name}' for model '{request.model_name}'")
    count = element_count(inp.shape)
    if dt.name == "BYTES":
        check_bytes_elements(count, where, limits)
    elif ref.byte_size != count * dt.itemsize:
        raise InvalidArgument(
            f"{where}: shared_memory_byte_size is {ref.byte_size}, but shape {format_shape(inp.shape)} of {dt.name} "
            f"needs {count * dt.itemsize} bytes ({count} elements x {dt.itemsize} bytes)")
    check_shared_memory_budget(where, ref.byte_size, budget, limits)
    return array_from_raw(read_input(regions, ref, take), dt, inp.shape, where)


def shm_outputs(request: InferRequest, spec: ModelSpec, batch: int, regions: SharedMemoryRegistry) -> ShmOutputs | None:
    """The requested outputs to write into shared memory, leased; an output whose dims are all static is
    checked against its region's size now, before the model runs. A failure releases what was leased."""
    shm = None
    try:
        for out in request.outputs:
            ref = shm_ref(out.parameters, out.name) if out.parameters else None
            if ref is None:
                continue
            regions.require_enabled()
            if shm is None:
                shm = ShmOutputs()
            shm.add(regions, out.name, ref)
            t = spec.output_by_name[out.name]
            if all(d >= 0 for d in t.dims) and t.datatype.name != "BYTES" and t.datatype.itemsize:
                rows = max(batch, 1) if spec.max_batch_size > 0 else 1
                shm.check_size(out.name, math.prod(t.dims) * rows * t.datatype.itemsize)
    except BaseException:
        if shm is not None:
            shm.release()
        raise
    return shm


class ShmOutputs:
    """The requested outputs that go to shared memory, each with its region leased until ``release``."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[Region, int, int]] = {}
        self._released = False

    def add(self, regions: SharedMemoryRegistry, name: str, ref: ShmRef) -> None:
        region = regions.acquire(ref.region)
        self.targets[name] = (region, ref.offset, ref.byte_size)
        region.check_span(ref.offset, ref.byte_size)

    def check_size(self, name: str, needed: int) -> None:
        """Triton's message when the region given for an output cannot hold it (INVALID_ARGUMENT here)."""
        size = self.targets[name][2]
        if needed > size:
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{name}' ({size} bytes) should be at "
                f"least {needed} bytes to hold the results")

    def write(self, name: str, data) -> None:
        """Write the output's raw bytes (a buffer) at the start of its span."""
        size = memoryview(data).nbytes
        self.check_size(name, size)
        region, offset, _ = self.targets[name]
        region.write(offset, data)

    def release(self) -> None:
        """End the leases (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        for region, _, _ in self.targets.values():
            region.release()
