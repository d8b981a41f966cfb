"""The KServe v2 REST endpoints (and Triton's extensions) as a table: path -> data-plane call -> reply.

Each endpoint is a function of the data plane, the path's arguments and the request, as ``grpc_methods``'
table is for gRPC, and carries Triton's restriction category (``--http-restricted-api``). Errors are the
data plane's :class:`~tensorwire.errors.RequestError` with the gRPC path's message, answered as an HTTP status
and ``{"error": message}``.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tensorwire import __version__
from tensorwire.errors import InvalidArgument, NotFound, RequestError
from tensorwire.server.call import Call
from tensorwire.server.dataplane import SERVER_NAME, DataPlane
from tensorwire.server.http_json import dumps, infer_response, loads, message_json, parse_infer_request

# gRPC status -> HTTP status (the rest: 500). 400/404/503/429/504 as KServe's and Triton's front ends map them.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
}
JSON = b"application/json"
# Answers smaller than this are sent as they are even to a client that accepts gzip: compressing them
# costs more than it saves.
GZIP_MIN_BYTES = 1024


@dataclass
class Request:
    """What an endpoint reads of an HTTP request: its headers, the body, the binary extension's header."""

    headers: list
    body: memoryview | bytes
    header_length: int | None = None
    call: Call = field(default_factory=Call)

    def json(self, what: str) -> dict:
        """The body as a JSON object ({} when empty)."""
        if not len(self.body):
            return {}
        doc = loads(self.body, what)
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{what}: expected a JSON object")
        return doc


@dataclass
class Reply:
    """An HTTP answer: status, body parts (sent in order), content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: bytes = JSON
    parts: list = field(default_factory=list)
    headers: list = field(default_factory=list)
    close: bool = False

    def size(self) -> int:
        return len(self.body) + sum(memoryview(p).nbytes for p in self.parts)

    def compressed(self, encoding: str) -> Reply:
        """This answer with its whole body compressed (``gzip`` or ``deflate``); the binary extension's
        Inference-Header-Content-Length still gives the uncompressed JSON header's length, as Triton's."""
        raw = b"".join([self.body, *self.parts])
        body = gzip.compress(raw, compresslevel=1) if encoding == "gzip" else zlib.compress(raw, 1)
        headers = [*self.headers, (b"content-encoding", encoding.encode())]
        return Reply(self.status, body, self.content_type, [], headers, self.close)


def error_reply(exc: RequestError) -> Reply:
    status = getattr(exc, "http_status", None) or HTTP_STATUS.get(exc.code, 500)
    return Reply(status, dumps({"error": str(exc)}), close=status in (408, 413))


def _ok(value=None) -> Reply:
    return Reply(200) if value is None else Reply(200, dumps(value))


def _bool(ok: bool) -> Reply:
    """Triton's health answers: 200 for true, 400 for false, no body."""
    return Reply(200 if ok else 400)


Run = Callable[[DataPlane, dict, Request], Reply]


@dataclass(frozen=True)
class Endpoint:
    method: str
    category: str  # Triton's restriction category
    run: Run
    body: bool = False  # reads a request body


# -- the endpoints ----------------------------------------------------------------------------------------
def _server_metadata(plane: DataPlane, _args, _req) -> Reply:
    return _ok({"name": SERVER_NAME, "version": __version__, "extensions": plane.server_extensions()})


def _tensors(tensors) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def _model_metadata(plane: DataPlane, args, _req) -> Reply:
    meta = plane.model_metadata(args["m"], args["v"])
    return _ok({"name": meta.name, "versions": meta.versions, "platform": meta.platform,
                "inputs": _tensors(meta.inputs), "outputs": _tensors(meta.outputs)})


def _model_stats(plane: DataPlane, args, _req) -> Reply:
    return _ok({"model_stats": [message_json(s) for s in plane.model_statistics(args.get("m", ""), args["v"])]})


def _repository_index(plane: DataPlane, _args, req: Request) -> Reply:
    ready = req.json("repository index request").get("ready", False) is True
    return _ok([{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                for e in plane.repository_index(ready_only=ready)])


def _load(plane: DataPlane, args, req: Request) -> Reply:
    params = req.json("load request").get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("load request: 'parameters' must be a JSON object")
    plane.load_model(args["m"], "", params)
    return _ok()


def _unload(plane: DataPlane, args, req: Request) -> Reply:
    req.json("unload request")
    plane.unload_model(args["m"])
    return _ok()


def _shm_status(plane: DataPlane, args, req: Request) -> Reply:
    return _ok([{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in plane.system_shared_memory_status(args.get("r", ""), req.call)])


def _shm_register(plane: DataPlane, args, req: Request) -> Reply:
    doc = req.json("shared memory register request")
    key, offset, size = doc.get("key"), doc.get("offset", 0), doc.get("byte_size")
    if not isinstance(key, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in (offset, size)):
        raise InvalidArgument("shared memory register request: expected 'key' (string), 'offset' and 'byte_size' "
                              "(integers)")
    plane.system_shared_memory_register(args["r"], key, offset, size, req.call)
    return _ok()


def _shm_unregister(plane: DataPlane, args, req: Request) -> Reply:
    plane.system_shared_memory_unregister(args.get("r", ""), req.call)
    return _ok()


def _cuda_status(plane: DataPlane, args, _req) -> Reply:
    return _ok(plane.cuda_shared_memory_status(args.get("r", "")))


def _cuda_register(plane: DataPlane, args, _req) -> Reply:
    plane.cuda_shared_memory_register(args["r"])
    return _ok()


def _cuda_unregister(plane: DataPlane, args, _req) -> Reply:
    plane.cuda_shared_memory_unregister(args.get("r", ""))
    return _ok()


def _infer(plane: DataPlane, args, req: Request) -> Reply:
    """The model first (an unknown one costs nothing more), then the body decoded under its bounds."""
    model = plane.model(args["m"], args["v"])
    http = parse_infer_request(memoryview(req.body), req.header_length, model.limits)
    http.request.model_name, http.request.model_version = args["m"], args["v"]
    header, parts, _size = infer_response(plane.infer(model, http.request, _call(req.call, http.request)), http,
                                          model.limits.max_typed_contents_bytes)
    if not parts:
        return Reply(200, header)
    return Reply(200, header, b"application/octet-stream", parts,
                 [(b"inference-header-content-length", str(len(header)).encode())])


def _call(call: Call, request) -> Call:
    """The caller, with the deadline of Triton's ``timeout`` request parameter (microseconds) when given: HTTP
    carries no deadline of its own (gRPC's grpc-timeout), and a request still waiting past it is not run (504)."""
    timeout_us = request.parameters.get("timeout")
    if timeout_us is None:
        return call
    if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or not 0 < timeout_us < 2**63:
        raise InvalidArgument(f"parameter 'timeout' must be a positive integer of microseconds, got {timeout_us!r}")
    return Call.of_http(call.is_active, timeout_us / 1e6, call.shm_token)


_MODEL = r"/v2/models/(?P<m>[^/]+)(?:/versions/(?P<v>[^/]+))?"
_SHM = r"/v2/systemsharedmemory"
_CUDA = r"/v2/cudasharedmemory"
ROUTES: list[tuple[re.Pattern, Endpoint]] = [(re.compile(f"^{p}$"), e) for p, e in [
    ("/v2/health/live", Endpoint("GET", "health", lambda plane, _a, _r: _bool(plane.live()))),
    ("/v2/health/ready", Endpoint("GET", "health", lambda plane, _a, _r: _bool(plane.ready()))),
    ("/v2", Endpoint("GET", "metadata", _server_metadata)),
    ("/v2/models/stats", Endpoint("GET", "statistics", lambda plane, _a, r: _model_stats(plane, {"v": ""}, r))),
    (_MODEL, Endpoint("GET", "metadata", _model_metadata)),
    (_MODEL + "/ready", Endpoint("GET", "health", lambda plane, a, _r: _bool(plane.model_ready(a["m"], a["v"])))),
    (_MODEL + "/config", Endpoint("GET", "model-config",
                                  lambda plane, a, _r: _ok(message_json(plane.model_config(a["m"], a["v"]))))),
    (_MODEL + "/stats", Endpoint("GET", "statistics", _model_stats)),
    (_MODEL + "/infer", Endpoint("POST", "inference", _infer, body=True)),
    ("/v2/repository/index", Endpoint("POST", "model-repository", _repository_index, body=True)),
    ("/v2/repository/models/(?P<m>[^/]+)/load", Endpoint("POST", "model-repository", _load, body=True)),
    ("/v2/repository/models/(?P<m>[^/]+)/unload", Endpoint("POST", "model-repository", _unload, body=True)),
    (_SHM + "/status", Endpoint("GET", "shared-memory", _shm_status)),
    (_SHM + "/region/(?P<r>[^/]+)/status", Endpoint("GET", "shared-memory", _shm_status)),
    (_SHM + "/region/(?P<r>[^/]+)/register", Endpoint("POST", "shared-memory", _shm_register, body=True)),
    (_SHM + "/region/(?P<r>[^/]+)/unregister", Endpoint("POST", "shared-memory", _shm_unregister, body=True)),
    (_SHM + "/unregister", Endpoint("POST", "shared-memory", _shm_unregister, body=True)),
    (_CUDA + "/status", Endpoint("GET", "shared-memory", _cuda_status)),
    (_CUDA + "/region/(?P<r>[^/]+)/status", Endpoint("GET", "shared-memory", _cuda_status)),
    (_CUDA + "/region/(?P<r>[^/]+)/register", Endpoint("POST", "shared-memory", _cuda_register, body=True)),
    (_CUDA + "/region/(?P<r>[^/]+)/unregister", Endpoint("POST", "shared-memory", _cuda_unregister, body=True)),
    (_CUDA + "/unregister", Endpoint("POST", "shared-memory", _cuda_unregister, body=True)),
]]


class MethodNotAllowed(InvalidArgument):
    http_status = 405


# Paths seen before and where they led: a client repeats its few paths, and the table is walked once for each.
_ROUTED: dict[str, tuple[Endpoint, dict]] = {}
ROUTE_CACHE_SIZE = 4096


def route(method: str, path: str) -> tuple[Endpoint, dict]:
    """The endpoint for ``method path`` and the path's arguments (m: model, v: version, r: region); the
    arguments are shared between calls with the same path and must not be changed."""
    found = _ROUTED.get(path)
    if found is None:
        found = _route(path)
        if len(_ROUTED) >= ROUTE_CACHE_SIZE:
            _ROUTED.clear()
        _ROUTED[path] = found
    endpoint = found[0]
    if method != endpoint.method and not (method == "HEAD" and endpoint.method == "GET"):
        raise MethodNotAllowed(f"{method} is not allowed on {path.rstrip('/') or '/'}; use {endpoint.method}")
    return found


def _route(path: str) -> tuple[Endpoint, dict]:
    path = path.rstrip("/") or "/"
    for pattern, endpoint in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        return endpoint, {k: v or "" for k, v in match.groupdict().items()}
    raise NotFound(f"no endpoint at {path}")
