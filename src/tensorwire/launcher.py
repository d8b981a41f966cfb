"""Servers in child processes on loopback: tensorwire itself and the bare grpcio echo floor.

Used by the demo, the benchmarks and the tests alike, so that every measurement and every test talks
to a real server over a real socket, started the way a user starts it. It lives in the root package,
not in bench/, because the demo (and anything else that serves) must not depend on the benchmarks:
dependencies point from bench/ down to serving code, never back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from tensorwire.client import TLS, open_channel

STARTUP_TIMEOUT_S = 120.0


@dataclass
class ServerProcess:
    address: str
    process: subprocess.Popen
    log_path: Path
    final_log: str | None = None  # kept once the server has stopped (its temporary log file is gone)
    metrics_port: int | None = None  # `tensorwire serve`'s metrics endpoint (its --metrics-port-file)
    http_port: int | None = None  # `tensorwire serve`'s HTTP/REST endpoint (its --http-port-file)

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        if self.final_log is not None:
            return self.final_log
        return self.log_path.read_text(errors="replace")


def _wait_live(address: str, proc: subprocess.Popen, log_path: Path, deadline: float,
               tls: TLS | None = None, headers: dict | None = None) -> None:
    """Poll ServerLive (answered by tensorwire; the echo server answers UNIMPLEMENTED, which also means up),
    over TLS and with ``headers`` when the server wants them."""
    metadata = tuple(headers.items()) if headers else None
    with open_channel(address, tls=tls) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                live(b"", timeout=1.0, metadata=metadata)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
                time.sleep(0.05)
    raise TimeoutError(f"server at {address} not live after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def launch(args: Sequence[str], *, workdir: Path | None = None, env: dict | None = None,
           check_exit: bool = True, stop_timeout_s: float = 30.0, tls: TLS | None = None,
           headers: dict | None = None, python: str | Path | None = None,
           prefix: Sequence[str] = ()) -> Iterator[ServerProcess]:
    """Run ``python <args> --port-file F`` (a server on port 0), wait until it is live, SIGTERM it on exit.

    Its port file and log go to ``workdir`` if given (kept), else to a temporary directory removed on exit;
    ``ServerProcess.log()`` still answers after that. ``tls`` and ``headers`` are what a client needs to
    reach a server started with TLS or restricted protocols; ``python`` runs another environment's
    interpreter (the packaging test serves from a freshly installed wheel that way); ``prefix`` comes before
    the interpreter (``taskset -c 0`` pins a bench peer).
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tensorwire-"))
        yield from _launch([*prefix, str(python or sys.executable), *args], Path(workdir), env, check_exit,
                           stop_timeout_s, tls, headers)


def _launch(command: Sequence[str], workdir: Path, env: dict | None, check_exit: bool,
            stop_timeout_s: float, tls: TLS | None, headers: dict | None) -> Iterator[ServerProcess]:
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    port_file = workdir / f"port-{stamp}"
    metrics_file = workdir / f"metrics-port-{stamp}"
    log_path = workdir / f"server-{stamp}.log"
    server = None
    http_file = workdir / f"http-port-{stamp}"
    if "serve" in command and "--metrics-port" in command:  # where its metrics port went (with port 0)
        command = [*command, "--metrics-port-file", str(metrics_file)]
    if "serve" in command and "--http-port" in command:  # where its HTTP port went (with port 0)
        command = [*command, "--http-port-file", str(http_file)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*command, "--port-file", str(port_file)], stdout=log_file,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()}):\n{log_path.read_text()}")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        _wait_live(address, proc, log_path, deadline, tls, headers)
        metrics_text = metrics_file.read_text().strip() if metrics_file.exists() else ""
        http_text = http_file.read_text().strip() if http_file.exists() else ""
        server = ServerProcess(address, proc, log_path, metrics_port=int(metrics_text) if metrics_text else None,
                               http_port=int(http_text) if http_text else None)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"server did not stop within {stop_timeout_s}s of SIGTERM:\n"
                                     f"{log_path.read_text()}") from None
        if server is not None:
            server.final_log = log_path.read_text(errors="replace")
        if check_exit and proc.returncode != 0:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM ``proc``, give it ``timeout_s`` seconds, then SIGKILL it; reaped either way (a peer server or a
    tool the tests run; a tensorwire server's own stop, which must exit 0 in time, is ``launch``'s)."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tensorwire_server(repository: Path, *extra_args: str, **kw) -> contextlib.AbstractContextManager[ServerProcess]:
    """`tensorwire serve` on 127.0.0.1 and a free port (its metrics and HTTP endpoints too, unless ``extra_args``
    say)."""
    http = [] if any(a.startswith("--allow-http") for a in extra_args) else ["--http-port", "0"]
    args = ["-m", "tensorwire", "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
            "--grpc-port", "0", "--metrics-port", "0", *http, *extra_args]
    return launch(args, **kw)


def echo_server(response_bytes: int, *extra_args: str, **kw) -> contextlib.AbstractContextManager[ServerProcess]:
    """The bare grpcio echo server (:mod:`tensorwire.echo`) answering with ``response_bytes`` bytes."""
    return launch(["-m", "tensorwire.echo", "--response-bytes", str(response_bytes), "--port", "0", *extra_args],
                  **kw)
