"""Which CPUs the server runs on: ``--cpu-affinity`` pins the process, and thread defaults follow the mask.

Pinning a server that runs small models to one core keeps its hand-offs (grpcio's completion-queue
thread, the handler thread, ONNX Runtime) on that core: waking a thread on another vCPU costs an
inter-processor interrupt, which on a virtual machine is a trip through the hypervisor. Measured here
(2 vCPUs, the client on the same machine, 3x224x224 FP32 input; bench/results/decisions/hot-path.md): the
server's overhead over in-process ONNX Runtime was 1.17-1.25x a bare grpcio echo's p50 unpinned and
1.03-1.12x with ``--cpu-affinity 1``. It is not the default: a model whose operators want several cores
(ResNet-50, BERT) would lose them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("tensorwire.affinity")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a cpuset or ``--cpu-affinity``), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_cpu_list(text: str) -> list[int]:
    """``"1"``, ``"0,2"`` or ``"0-3,6"`` as a sorted list of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(f"CPU list '{text}': '{part}' is not a CPU number or a range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"CPU list '{text}': '{part}' is not a valid range")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def check_cpus(cpus: list[int]) -> None:
    """ValueError naming the CPUs of ``cpus`` this process may not use."""
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise ValueError(f"--cpu-affinity {','.join(map(str, cpus))}: CPU(s) {','.join(map(str, outside))} are not "
                         f"available to this process (it may use {','.join(map(str, sorted(allowed)))})")


def pin_process(cpus: list[int]) -> None:
    """Restrict every thread of this process (those started later inherit it) to ``cpus``."""
    check_cpus(cpus)
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)
    log.info("cpu affinity: %s", ",".join(map(str, cpus)))


def share_for_worker(cpus: list[int], index: int, workers: int) -> list[int]:
    """Worker ``index``'s CPUs: its own slice of ``cpus`` when there are enough to go round, else all."""
    return cpus[index::workers] if len(cpus) >= workers else list(cpus)
