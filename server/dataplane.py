"""The data plane: every operation the protocol offers, once, for every transport.

gRPC (grpcio's server or the C-core serving loop) and HTTP/REST are thin over this: they turn their bytes
and call state into arguments and a :class:`~tensorwire.server.call.Call`, call one method here, and turn the
result or the :class:`~tensorwire.errors.RequestError` into their own wire form. Health, metadata, model
control, statistics, shared memory, admission, draining and the count of requests in flight live here and
nowhere else, so the two protocols cannot drift apart (MLServer's DataPlane is the same shape).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tensorwire.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable, Unimplemented
from tensorwire.fastpath import Codec
from tensorwire.proto.messages import InferRequest, InferResponse
from tensorwire.server.call import ANY_CALLER, Call
from tensorwire.server.limits import check_config_json_size, quoted
from tensorwire.server.model import Model
from tensorwire.server.repository import READY, ModelRepository
from tensorwire.server.shared_memory import CUDA_UNSUPPORTED, TOKEN_HEADER, Region, SharedMemoryRegistry

DRAINING = "server is shutting down; not accepting new requests"
MODEL_CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"
# grpcio's words for a call refused by its concurrency bound, kept for clients that match on them.
ADMISSION_REFUSED = "Concurrent RPC limit exceeded!"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "binary_tensor_data", "parameters")
SERVER_NAME = "tensorwire"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata (gRPC) and GET /v2/models/{m} (HTTP) describe."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class RepositoryEntry:
    name: str
    version: str
    state: str
    reason: str


class InFlight:
    """Inference requests being served, counted so that shutdown can say what its grace let finish. A request a
    transport holds back before it reaches its model (the core loop's parked requests: ``hold(1)``, then
    ``hold(-1)`` as it goes on to its model, where ``enter`` counts it) counts as started meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.started = 0
        self.finished = 0
        self.waiting = 0

    def hold(self, change: int) -> None:
        """+1: a transport holds a request back before its model; -1: the request goes on to its model (which
        counts it as it enters); 0: such a request's work ended, maybe failing before its model (a body that
        does not decode), so a drain waiting for it looks again."""
        with self._lock:
            self.waiting += change
            if not change and self._idle():
                self._lock.notify_all()

    def enter(self) -> None:
        with self._lock:
            self.started += 1

    def leave(self) -> None:
        with self._lock:
            self.finished += 1
            if self._idle():
                self._lock.notify_all()

    def __enter__(self) -> None:
        self.enter()

    def __exit__(self, *exc) -> None:
        self.leave()

    def wait_idle(self, timeout_s: float) -> bool:
        """Until no request is being served or held back (True), or ``timeout_s`` passed (False)."""
        with self._lock:
            return self._lock.wait_for(self._idle, timeout_s)

    def _idle(self) -> bool:  # with the lock held
        return self.finished == self.started and not self.waiting

    def snapshot(self) -> tuple[int, int]:
        """(requests started, held back ones included; requests finished)."""
        with self._lock:
            return self.started + self.waiting, self.finished


class Admission:
    """``--max-concurrent-rpcs``: calls admitted at once, counted from the moment a call starts until it ends,
    over every transport. Health calls are never counted, so a server full of work still answers its probes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.admitted >= self.limit:
                return False
            self.admitted += 1
            return True

    def enter(self) -> None:
        """``try_enter`` or RESOURCE_EXHAUSTED."""
        if not self.try_enter():
            raise ResourceExhausted(ADMISSION_REFUSED)

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1


class DataPlane:
    """The server's operations over its repository, codec and shared-memory registry."""

    def __init__(self, repository: ModelRepository, codec: Codec, regions: SharedMemoryRegistry) -> None:
        self.repository = repository
        self.settings = repository.settings
        self.codec = codec
        self.regions = regions
        self.draining = threading.Event()
        self.started = threading.Event()
        self.in_flight = InFlight()
        self.admission = Admission(self.settings.max_concurrent_rpcs)

    # -- health ------------------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self.draining.is_set() or not self.started.is_set():
            return False
        strict = self.settings.strict_readiness  # Triton's: every model it was asked for is available
        return not (strict and (self.repository.startup_failures or not self.repository.all_available()))

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except (NotFound, Unavailable, InvalidArgument):
            return False
        return not self.draining.is_set()

    def ready_models(self) -> list[str]:
        return [e.name for e in self.repository_index() if e.state == READY]

    # -- metadata, configuration, statistics -------------------------------------------------------------
    def server_extensions(self) -> list[str]:
        return [*EXTENSIONS, "system_shared_memory"] if self.regions.enabled else list(EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.repository.get(name, version)
        spec = model.spec
        entry = self.repository.entry(name)
        return ModelMetadata(
            name=spec.name,
            versions=sorted(entry.versions, key=int) if entry else [model.version],
            platform=spec.config.platform or "onnxruntime_onnx",
            inputs=[TensorMetadata(t.name, t.datatype.name, spec.full_shape(t)) for t in spec.inputs],
            outputs=[TensorMetadata(t.name, t.datatype.name, spec.full_shape(t)) for t in spec.outputs],
        )

    def model_config(self, name: str, version: str = ""):
        """The completed ``pb.ModelConfig`` the model serves with."""
        return self.repository.get(name, version).spec.config

    def model_statistics(self, name: str = "", version: str = "") -> list:
        """``pb.ModelStatistics`` of the model asked for, or of every loaded version (empty name)."""
        models = [self.repository.get(name, version)] if name else self.repository.loaded()
        return [m.stats.to_proto(m.spec.name, m.version) for m in models]

    # -- model repository --------------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        return [RepositoryEntry(*row) for row in self.repository.index(ready_only=ready_only)]

    def load_model(self, name: str, repository_name: str = "", parameters: dict | None = None) -> None:
        """Load or reload ``name``; ``parameters`` may hold Triton's ``config`` (a ModelConfig as JSON)."""
        self._check_model_control(repository_name)
        config_json = None
        for key, value in (parameters or {}).items():
            if key != "config":
                raise InvalidArgument(f"load parameter {quoted(key)} is not supported; tensorwire accepts 'config' "
                                      "(a ModelConfig as JSON)")
            if not isinstance(value, str):
                raise InvalidArgument(f"model {quoted(name)}: the 'config' parameter must be a string of JSON")
            check_config_json_size(name, value)
            config_json = value
        self.repository.load(name, config_json)

    def unload_model(self, name: str, repository_name: str = "") -> None:
        self._check_model_control(repository_name)
        self.repository.unload(name)

    def _check_model_control(self, repository_name: str) -> None:
        """Load and unload are privileged: refused (Triton's words) unless --model-control-mode explicit."""
        if self.settings.model_control_mode != "explicit":
            raise Unavailable(MODEL_CONTROL_DISABLED)
        root = self.repository.root
        if repository_name and repository_name not in (root.name, str(root)):
            raise NotFound(f"unknown repository {quoted(repository_name)}; this server has one: '{root.name}'")

    # -- shared memory (server/shared_memory.py; docs/shared-memory.md) ----------------------------------
    @property
    def token_header(self) -> str | None:
        """The metadata key (header) a transport reads into ``Call.shm_token``; None when no token is needed."""
        return TOKEN_HEADER if self.regions.require_token else None

    def system_shared_memory_status(self, name: str = "", call: Call = ANY_CALLER) -> list[Region]:
        return self.regions.seen_by(call.shm_token).status(name)

    def system_shared_memory_register(self, name: str, key: str, offset: int, byte_size: int,
                                      call: Call = ANY_CALLER) -> None:
        self.regions.seen_by(call.shm_token).register(name, key, offset, byte_size)

    def system_shared_memory_unregister(self, name: str = "", call: Call = ANY_CALLER) -> None:
        self.regions.seen_by(call.shm_token).unregister(name)

    def cuda_shared_memory_status(self, name: str = "") -> list:
        """No CUDA region can exist here, so the status is empty; Triton's CPU build answers the same."""
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: {quoted(name)}")
        return []

    def cuda_shared_memory_register(self, *_args) -> None:
        raise Unimplemented(CUDA_UNSUPPORTED)

    def cuda_shared_memory_unregister(self, name: str = "") -> None:
        """Nothing to unregister (Triton's CPU build answers OK too): perf_analyzer and tritonclient's clean-up
        unregister CUDA regions unconditionally, and should not see an error for it."""

    # -- inference ---------------------------------------------------------------------------------------
    def model(self, name: str, version: str = "") -> Model:
        """The model a request is for; UNAVAILABLE while the server drains."""
        if self.draining.is_set():
            raise Unavailable(DRAINING)
        return self.repository.get(name, version)

    def infer(self, model: Model, request: InferRequest, call: Call) -> InferResponse:
        """Serve one decoded request on ``model`` (counted in flight for the shutdown report)."""
        with self.in_flight:
            return model.infer(request, call, self.regions.seen_by(call.shm_token))

    def infer_bytes(self, request_bytes, call: Call, model: Model | None = None) -> InferResponse:
        """A ModelInferRequest in wire bytes: the model first (``model_of``, unless given), then the body,
        decoded under that model's bounds, so an unknown model or a hostile count costs nothing beyond the
        transport's receive (docs/resilience.md)."""
        if model is None:
            model = self.model_of(request_bytes)
        return self.infer(model, self.codec.decode_infer_request(request_bytes, model.check_contents), call)

    def infer_bytes_then(self, request_bytes, call: Call, model: Model,
                         then: Callable[[InferResponse | None, BaseException | None], None]) -> None:
        """``infer_bytes`` for a model that ``batches``, without waiting (``Model.infer_then``): the request
        counts in flight until ``then`` has run."""
        request = self.codec.decode_infer_request(request_bytes, model.check_contents)
        self.in_flight.enter()

        def done(response: InferResponse | None, error: BaseException | None) -> None:
            try:
                then(response, error)
            finally:
                self.in_flight.leave()

        try:
            model.infer_then(request, call, self.regions.seen_by(call.shm_token), done)
        except BaseException:
            self.in_flight.leave()
            raise

    def model_of(self, request_bytes) -> Model:
        """The model a ModelInferRequest in wire bytes is for (the peek reads fields 1-2 only)."""
        name, version = self.codec.peek_infer_request(request_bytes)
        return self.model(name, version)

    def close(self) -> None:
        """Release what the data plane holds beyond the repository (shared-memory regions)."""
        self.regions.close()
