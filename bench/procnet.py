"""Which process holds which TCP connection, from /proc (Linux): to tell which worker a client landed on.

``--workers N`` processes share one port and the kernel picks a worker per connection; nothing on the wire
says which. /proc/net/tcp{,6} lists every connection with its socket inode, and /proc/PID/fd shows which
inodes a process holds, so a client's local port maps to the worker serving it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_ESTABLISHED, _LISTEN = "01", "0A"


def _connections() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every TCP socket on this host's loopback and beyond."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    return rows


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it exited meanwhile
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        out.extend(int(c) for c in text)
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (workers may be children of a fork server, not of the server itself)."""
    out, todo = [], children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        try:
            todo.extend(children(child))
        except OSError:  # it exited meanwhile
            continue
    return out


def client_ports(server_port: int, pid: int | None = None) -> set[int]:
    """Local ports of this process's (or ``pid``'s) established connections to ``server_port``."""
    mine = socket_inodes(pid or os.getpid())
    return {lp for lp, rp, state, inode in _connections() if rp == server_port and state == _ESTABLISHED
            and inode in mine}


def worker_of(client_port: int, server_port: int, workers: list[int]) -> int | None:
    """The worker pid that holds the server side of the connection from ``client_port``."""
    inodes = {inode for lp, rp, state, inode in _connections()
              if lp == server_port and rp == client_port and state == _ESTABLISHED}
    for pid in workers:
        if inodes & socket_inodes(pid):
            return pid
    return None


def listening(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a listening socket on ``port``."""
    inodes = {inode for lp, _, state, inode in _connections() if lp == port and state == _LISTEN}
    return bool(inodes & socket_inodes(pid))


def listeners(port: int) -> list[int]:
    """Pids holding a listening socket on ``port`` (every ``--workers`` process with SO_REUSEPORT), sorted.

    Only processes whose /proc/PID/fd this user may read are seen: a server of another user is not found.
    """
    inodes = {inode for lp, _, state, inode in _connections() if lp == port and state == _LISTEN}
    if not inodes:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and inodes & socket_inodes(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def free_port() -> int:
    """A loopback TCP port free now, for a server that takes its port on the command line (not port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
