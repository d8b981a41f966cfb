"""HTTP/REST for `tensorwire bench load --protocol http`: KServe v2 REST with Triton's binary tensor data.

A caller here stands where load.py's gRPC stub does: called with the request body (and a timeout) it sends
one inference on its own keep-alive connection; ``future`` sends from a small pool of such connections for
the open loop. A status other than 200 raises :class:`HttpError`, counted by load.py like a gRPC code.
"""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

# Connections an open-loop caller sends from: requests in flight at once per worker process.
OPEN_LOOP_CONNECTIONS = 64


class HttpError(grpc.RpcError):
    """A non-200 answer, counted by its status (HTTP_429, HTTP_503, ...) as load.py counts gRPC codes."""

    def __init__(self, status: int, text: str = "") -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status

    def code(self):
        return type("Code", (), {"name": f"HTTP_{self.status}"})


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpCaller:
    """POST /v2/models/{model}[/versions/{v}]/infer with fixed headers, over keep-alive connections."""

    def __init__(self, target: str, model: str, version: str, headers: dict[str, str]) -> None:
        self.host, self.port = _split(target)
        self.path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        self.headers = headers
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return conn

    def __call__(self, request: bytes, timeout: float | None = None) -> bytes:
        conn = self._connection(timeout)
        try:
            conn.request("POST", self.path, request, self.headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._local.conn = None
            raise HttpError(0, str(exc)) from None
        if resp.status != 200:
            raise HttpError(resp.status, body[:200].decode(errors="replace"))
        return body

    def future(self, request: bytes, timeout: float | None = None) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(OPEN_LOOP_CONNECTIONS, thread_name_prefix="http-load")
        return self._pool.submit(self, request, timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def fetch_inputs(target: str, model: str, version: str, timeout_s: float, headers: dict) -> list[dict[str, Any]]:
    """``[{name, datatype, shape}]`` from GET /v2/models/{model}."""
    host, port = _split(target)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise RuntimeError(f"GET {path} at {target} failed: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path} at {target}: HTTP {resp.status}: {body[:200].decode(errors='replace')}")
    return [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in json.loads(body)["inputs"]]


def encode(arrays: dict[str, tuple[str, np.ndarray]]) -> tuple[bytes, dict[str, str]]:
    """(body, headers): every input as binary tensor data after the JSON header, outputs asked as binary."""
    inputs, parts = [], []
    for name, (dt, arr) in arrays.items():
        if dt == "BYTES":
            raw = b"".join(len(b := (x if isinstance(x, bytes) else str(x).encode())).to_bytes(4, "little") + b
                           for x in arr.reshape(-1))
        else:
            raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        inputs.append({"name": name, "datatype": dt, "shape": list(arr.shape),
                       "parameters": {"binary_data_size": len(raw)}})
        parts.append(raw)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(parts), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}
