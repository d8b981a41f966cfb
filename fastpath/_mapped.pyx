# cython: language_level=3
"""Copies in and out of a client's shared-memory object that survive the client shrinking it.

A POSIX shared-memory object is the client's: it can ftruncate it at any moment, and touching a mapped
page past the new end raises SIGBUS, which kills a process by default. The server therefore never hands
mapped memory to ONNX Runtime or numpy. It maps the region and copies through :class:`Mapping` only:
each copy runs without the GIL under a per-thread guard, and a SIGBUS raised inside a guarded copy
returns the thread to the guard (``siglongjmp``), which reports a failed copy. A SIGBUS anywhere else
is not ours: the handler puts back the action it replaced (faulthandler's, or the default) and returns,
so the faulting access runs again under that action, as if this module had never been loaded.

Why not ``preadv``/``pwrite`` alone (the fallback, server/shared_memory.py): the kernel's per-page
copy costs 2x to 4x a memcpy from a mapping (4.8 MB: ~0.5 to 1.0 against ~0.23 ms;
bench/results/decisions/shared-memory.md).
"""

from libc.errno cimport errno

cdef extern from *:
    """
    #include <setjmp.h>
    #include <signal.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/stat.h>

    /* volatile, and the barriers below: the compiler must not drop or move the stores around memcpy
       (nothing in memcpy reads them, so without these they are dead stores it may remove). initial-exec:
       a plain %fs-relative load in the handler, never the lazy allocation (malloc) that the dynamic TLS
       model may do on a thread's first access, which a signal handler must not risk. */
    static __thread sigjmp_buf *volatile tw_guard __attribute__((tls_model("initial-exec"))) = NULL;
    static struct sigaction tw_previous;
    static int tw_installed = 0;

    static void tw_on_sigbus(int sig, siginfo_t *info, void *context) {
        sigjmp_buf *guard = tw_guard;
        if (guard != NULL) {
            tw_guard = NULL;
            siglongjmp(*guard, 1);
        }
        /* Not inside a guarded copy: restore what was there; the access faults again under it. */
        sigaction(SIGBUS, &tw_previous, NULL);
        (void)sig; (void)info; (void)context;
    }

    static int tw_install(void) {
        struct sigaction action;
        if (tw_installed) return 0;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = tw_on_sigbus;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &tw_previous) != 0) return -1;
        tw_installed = 1;
        return 0;
    }

    static int tw_installed_now(void) {
        struct sigaction current;
        if (sigaction(SIGBUS, NULL, &current) != 0) return 0;
        return (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == tw_on_sigbus;
    }

    /* 0 when n bytes were copied; -1 when a page of either side raised SIGBUS (the object was shrunk). */
    static int tw_guarded_copy(void *dst, const void *src, size_t n) {
        sigjmp_buf guard;
        if (sigsetjmp(guard, 1) != 0) {
            return -1;
        }
        tw_guard = &guard;
        __asm__ __volatile__("" ::: "memory");
        memcpy(dst, src, n);
        __asm__ __volatile__("" ::: "memory");
        tw_guard = NULL;
        return 0;
    }

    /* The object's size now (fstat), or -1. */
    static long long tw_object_size(int fd) {
        struct stat st;
        return fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
    }

    static void *tw_map(int fd, size_t length, off_t offset) {
        void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
        return p == MAP_FAILED ? NULL : p;
    }
    """
    int tw_install() nogil
    int tw_installed_now() nogil
    int tw_guarded_copy(void *dst, const void *src, size_t n) nogil
    void *tw_map(int fd, size_t length, long offset) nogil
    long long tw_object_size(int fd) nogil
    int munmap(void *addr, size_t length) nogil

import mmap as _mmap
import os as _os

PAGE = _mmap.ALLOCATIONGRANULARITY


class Shrunk(Exception):
    """A guarded copy touched a page the object no longer has (the client shrank it after the checks)."""


def guard_installed() -> bool:
    """Whether the SIGBUS handler of this module is the process's current one."""
    return bool(tw_installed_now())


cdef class Mapping:
    """``length`` bytes at ``offset`` of the object open as ``fd``, mapped shared; copies go through guards.

    The copies do not check the object's size: the caller does, with :meth:`object_size` (fstat in C, a
    few hundred ns where Python's os.fstat costs ~3.5 us), and the guard catches a shrink after that. The
    mapping starts at the page below ``offset``; ``close`` unmaps it (the owner calls it once no request
    uses the region). The descriptor stays the caller's and must outlive the mapping.
    """

    cdef int fd
    cdef char *base      # the mapping's first byte (page aligned)
    cdef size_t mapped   # bytes mapped
    cdef size_t skip     # offset - the page-aligned start: where the region begins in the mapping
    cdef readonly size_t length

    def __cinit__(self, int fd, size_t offset, size_t length):
        cdef size_t start = offset - offset % PAGE
        self.fd = fd
        self.skip = offset - start
        self.length = length
        self.mapped = self.skip + length
        self.base = NULL
        if tw_install() != 0:
            raise OSError(errno, f"cannot install the SIGBUS guard: {_os.strerror(errno)}")
        if self.mapped == 0:
            return
        cdef void *p = tw_map(fd, self.mapped, <long>start)
        if p == NULL:
            raise OSError(errno, f"cannot map the shared-memory object: {_os.strerror(errno)}")
        self.base = <char *>p

    def __dealloc__(self):
        self.close()

    cpdef close(self):
        """Unmap (idempotent)."""
        if self.base != NULL:
            munmap(self.base, self.mapped)
            self.base = NULL

    cdef char *_at(self, size_t offset, size_t n) except NULL:
        if self.base == NULL and n:
            raise ValueError("the mapping is closed")
        if offset > self.length or n > self.length - offset:
            raise ValueError(f"{n} bytes at offset {offset} are outside the region's {self.length} bytes")
        return self.base + self.skip + offset

    def object_size(self) -> int:
        """The object's size in bytes now (fstat)."""
        cdef long long size = tw_object_size(self.fd)
        if size < 0:
            raise OSError(errno, _os.strerror(errno))
        return size

    def read_into(self, size_t offset, unsigned char[::1] into not None):
        """Copy ``len(into)`` bytes at ``offset`` of the region into ``into``; :class:`Shrunk` on SIGBUS."""
        cdef size_t n = into.shape[0]
        if n:
            _guarded(&into[0], self._at(offset, n), n, offset)

    def write_from(self, size_t offset, const unsigned char[::1] data not None):
        """Copy ``data`` to ``offset`` of the region; :class:`Shrunk` on SIGBUS."""
        cdef size_t n = data.shape[0]
        if n:
            _guarded(self._at(offset, n), &data[0], n, offset)


cdef int _guarded(void *dst, const void *src, size_t n, size_t offset) except -1:
    """One guarded copy without the GIL; :class:`Shrunk` if it faulted."""
    cdef int rc
    with nogil:
        rc = tw_guarded_copy(dst, src, n)
    if rc != 0:
        raise Shrunk(offset, n)
    return 0
