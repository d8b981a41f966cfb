"""A process's figures from /proc (Linux): CPU seconds (for CPU per request), /proc/PID/status fields.

Read from /proc/PID/stat (utime, stime: every thread, those that ended too), in clock ticks of 10 ms
here, so a figure needs a window of many requests: at ~1 ms of CPU per request, 1,000 requests give 1 %.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tensorwire.bench import procnet

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def stat_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid``; (0, 0) when it is gone (a worker that exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text.rsplit(")", 1)[1].split()   # the command name may hold spaces and parentheses
    return int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """User + system seconds of ``pid`` (0 when it is gone)."""
    return sum(stat_times(pid))


def status_field(pid: int, key: str) -> int:
    """The number in /proc/PID/status line ``key`` (VmRSS and VmHWM in KiB, Threads a count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


def cpu_times(pids: list[int]) -> dict[int, tuple[float, float]]:
    """(user, system) seconds per pid, read as close together as possible."""
    return {pid: stat_times(pid) for pid in pids}


def cpu_per_request(before: dict, after: dict, requests: int, pids: list[int]) -> dict[str, Any]:
    """The CPU the server spent between two readings, in total and per successful request."""
    user = sum(after[p][0] - before[p][0] for p in pids)
    system = sum(after[p][1] - before[p][1] for p in pids)
    total = user + system
    return {"pids": list(pids), "user_s": user, "system_s": system, "cpu_s": total,
            "us_per_request": total / requests * 1e6 if requests else float("nan"),
            "tick_s": _TICK_S}


def local_server_pids(target: str) -> list[int]:
    """The processes serving a loopback ``HOST:PORT``: those listening on it and their descendants
    (``--workers`` children), or [] when the target is not on this host or not readable here."""
    parts = urlsplit(f"//{target}")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return []
    pids = procnet.listeners(parts.port)
    every = list(pids)
    for pid in pids:
        try:
            every.extend(p for p in procnet.descendants(pid) if p not in every)
        except OSError:
            continue
    return sorted(set(every))
