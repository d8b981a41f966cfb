"""A real tensorwire server in a subprocess on an ephemeral loopback port (used by fixtures and tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

STARTUP_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    address: str
    process: subprocess.Popen
    log_path: Path
    repository: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_ready(address: str, proc: subprocess.Popen, log_path: Path) -> None:
    from tensorwire import proto as pb

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        ready = channel.unary_unary(
            f"/{pb.SERVICE_NAME}/ServerLive",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if ready(pb.ServerLiveRequest(), timeout=1.0).live:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"server not live after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def start_server(repository: Path, *extra_args: str, env: dict | None = None,
                 check_exit: bool = True) -> Iterator[ServerProcess]:
    """Run `tensorwire serve` on 127.0.0.1:<free port>; on exit SIGTERM it and check it stopped cleanly."""
    run_dir = Path(repository).parent
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    port_file = run_dir / f"port-{stamp}"
    log_path = run_dir / f"server-{stamp}.log"
    cmd = [sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repository),
           "--host", "127.0.0.1", "--grpc-port", "0", "--port-file", str(port_file), *extra_args]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()}):\n{log_path.read_text()}")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        _wait_ready(address, proc, log_path)
        yield ServerProcess(address, proc, log_path, Path(repository))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"server did not stop within 30 s of SIGTERM:\n{log_path.read_text()}") from None
        if check_exit:
            assert proc.returncode == 0, f"server exited with {proc.returncode}:\n{log_path.read_text()}"
