"""A loaded model version, and the one owner of serving a request on it.

``Model.infer`` runs every step of a request in one place: prepare (validate, make ORT feeds), schedule
(a free instance or the dynamic batcher), package (the response object) and record (statistics). The
transports (gRPC, HTTP, in-process callers) stay thin: they decode bytes, look the model up, call ``infer``
with a :class:`~tensorwire.server.call.Call`, and encode the answer. Data flows one way:
bytes -> codec -> model -> codec -> bytes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from tensorwire.errors import Cancelled, DeadlineExceeded, Internal, RequestError, ResourceExhausted
from tensorwire.proto.datatypes import DATATYPES
from tensorwire.proto.messages import InferRequest, InferResponse, OutputTensor
from tensorwire.proto.tensors import raw_from_array
from tensorwire.server.call import ANY_CALLER, Call
from tensorwire.server.model_config import ModelSpec
from tensorwire.server.request_limits import DEFAULT_LIMITS, RequestLimits, ResponseBound
from tensorwire.server.scheduler import Execution, Scheduler
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.shared_memory import NO_REGIONS, SharedMemoryRegistry
from tensorwire.server.statistics import ModelStatistics, RequestTimes
from tensorwire.server.validation import FastLane, PreparedRequest, contents_check, prepare, prepare_fast

log = logging.getLogger("tensorwire.model")
access_log = logging.getLogger("tensorwire.access")
# What a Model built without one (tests, in-process callers) takes its scratch buffers from.
DEFAULT_SCRATCH = ScratchPool()


def failure_reason(exc: BaseException) -> str:
    """Triton's nv_inference_request_failure reason for a failed request: REJECTED (refused by a full
    queue), CANCELED (the caller left or its deadline passed), BACKEND (the runtime failed), OTHER."""
    if isinstance(exc, ResourceExhausted):
        return "REJECTED"
    if isinstance(exc, DeadlineExceeded | Cancelled):
        return "CANCELED"
    if isinstance(exc, Internal) or not isinstance(exc, RequestError):
        return "BACKEND"
    return "OTHER"


@dataclass(eq=False)
class Model:
    """A model version ready to serve: its spec, the scheduler in front of its instances, its statistics."""

    spec: ModelSpec
    version: str
    scheduler: Scheduler
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    sessions: tuple = ()  # the ORT sessions behind the instances, for what they report (thread counts)
    limits: RequestLimits = DEFAULT_LIMITS  # what one request may cost (the server's flags)
    scratch: ScratchPool = DEFAULT_SCRATCH  # the server's pool of scratch buffers (server/scratch.py)
    lane: FastLane = field(init=False)  # the spec precomputed for validation's fast lane
    output_datatypes: dict[str, str] = field(init=False)  # output name -> KServe datatype name
    # Passed to the codec's decode: refuses typed contents this model cannot take (shape, datatype, count, a
    # repeated input, the size bounds) before they are decoded.
    check_contents: Callable = field(init=False)
    response_bound: ResponseBound = field(init=False)
    access_rate: float = 0.0  # share of requests written to the access log (--log-requests)
    # Set by ``retire``: where a request that reaches this model after a reload or unload goes instead.
    _resolve: Callable[[str, str], Model] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.lane = FastLane.of(self.spec)
        self.output_datatypes = {t.name: t.datatype.name for t in self.spec.outputs}
        self.check_contents = contents_check(self.spec, self.limits)
        self.response_bound = ResponseBound.of(self.spec, self.limits)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def work_bound(self) -> int | None:
        """Requests of this model worth working on at once (its scheduler's); None: no bound."""
        return self.scheduler.work_bound

    @property
    def batches(self) -> bool:
        """Whether its requests wait in a dynamic batcher's queue (``infer_then`` parks them there)."""
        return self.scheduler.work_bound is None

    def infer(self, request: InferRequest, call: Call = ANY_CALLER,
              regions: SharedMemoryRegistry = NO_REGIONS) -> InferResponse:
        """Prepare, schedule, package and record one request; a failure is recorded and raised. ``regions``:
        the server's shared-memory registry, for requests that name a region."""
        serving = _Serving(request, call)
        self.stats.begin()  # before the retired check: a drain that saw no request pending saw this one's check
        if self._resolve is not None:
            self.stats.abandon()
            return self._resolve(request.model_name, request.model_version).infer(request, call, regions)
        self._prepare(serving, regions)
        try:
            execution = self.scheduler.execute(serving.prep, call)
        except BaseException as exc:
            self._fail(serving, exc)
            raise
        return self._complete(serving, execution)

    def infer_then(self, request: InferRequest, call: Call, regions: SharedMemoryRegistry,
                   then: Callable[[InferResponse | None, BaseException | None], None]) -> None:
        """``infer`` for a model that ``batches``, without waiting: the request joins the batcher's queue and
        the caller's thread goes on; ``then(response, None)`` or ``then(None, error)`` runs once its batch
        ran or it left the queue, on the thread that ran the batch or dropped it. What fails before the
        request is queued (its preparation, a full queue) is recorded and raised here, and ``then`` never runs."""
        serving = _Serving(request, call)
        self.stats.begin()
        if self._resolve is not None:
            self.stats.abandon()
            successor = self._resolve(request.model_name, request.model_version)
            if successor.batches:
                successor.infer_then(request, call, regions, then)
            else:  # reloaded without a batcher: served here, as its requests are
                then(successor.infer(request, call, regions), None)
            return
        self._prepare(serving, regions)

        def ran(execution: Execution | None, error: BaseException | None) -> None:
            if error is not None:
                self._fail(serving, error)
                then(None, error)
                return
            try:
                response = self._complete(serving, execution)
            except BaseException as exc:
                then(None, exc)
                return
            then(response, None)

        try:
            self.scheduler.submit(serving.prep, call, ran)
        except BaseException as exc:
            self._fail(serving, exc)
            raise

    def _prepare(self, serving: _Serving, regions: SharedMemoryRegistry) -> None:
        """Validate the request and make its feeds (``serving.prep``); a refusal is recorded and raised."""
        try:
            serving.prep = (prepare_fast(serving.request, self.lane, self.scratch)
                            or prepare(serving.request, self.spec, self.limits, regions, self.scratch))
            if self.response_bound.before:  # only models whose largest static answer exceeds --max-message-mb
                self.response_bound.check(serving.prep)
        except BaseException as exc:
            self._fail(serving, exc)
            raise
        serving.prepared = time.perf_counter_ns()

    def _complete(self, serving: _Serving, execution: Execution) -> InferResponse:
        """Package and record a request that ran; what it held is given back (its execution is over)."""
        prep = serving.prep
        ran = time.perf_counter_ns()
        try:
            if self.response_bound.after:  # dynamic output dims: the arrays' size, before anything is encoded
                self.response_bound.check(prep, execution.outputs)
            response = self._package(serving.request, prep, execution.outputs)
        except BaseException as exc:
            self._fail(serving, exc)
            raise
        _release(prep, self.scratch)
        end = time.perf_counter_ns()
        call = serving.call
        times = RequestTimes(queue_ns=call.waited_ns + execution.queue_ns,
                             compute_input_ns=serving.prepared - serving.begun + execution.input_ns,
                             compute_infer_ns=execution.infer_ns, compute_output_ns=end - ran)
        self.stats.record_success(prep.batch_size, end - serving.start, times)
        if self.access_rate and random.random() < self.access_rate:
            self._access(serving.request, "OK", serving.start, end)
        return response

    def _fail(self, serving: _Serving, exc: BaseException) -> None:
        """Record a failed request and give back what it held (its execution is over, or never began)."""
        if serving.prep is not None:
            _release(serving.prep, self.scratch)
            serving.prep = None
        self.stats.record_failure(time.perf_counter_ns() - serving.start, failure_reason(exc))
        if self.access_rate and random.random() < self.access_rate:
            self._access(serving.request, getattr(exc, "code", grpc.StatusCode.INTERNAL).name, serving.start)

    def _access(self, request: InferRequest, status: str, start: int, end: int = 0) -> None:
        """One access-log line (sampled by --log-requests): model, version, status, latency, request id."""
        latency_us = ((end or time.perf_counter_ns()) - start) // 1000
        access_log.info("request %s %s %s %dus id=%s", self.spec.name, self.version, status, latency_us,
                        request.id or "-", extra={"event": "request", "fields": {
                            "model": self.spec.name, "version": self.version, "status": status,
                            "latency_us": latency_us, "request_id": request.id}})

    def _package(self, request: InferRequest, prep: PreparedRequest, arrays: list) -> InferResponse:
        datatypes = self.output_datatypes
        outputs = []
        shm = prep.shm.targets if prep.shm is not None else ()
        for name, arr in zip(prep.output_names, arrays):
            arr = np.asarray(arr)
            if name in shm:  # into the client's region; the answer carries its metadata and an empty entry
                prep.shm.write(name, raw_from_array(arr, DATATYPES[datatypes[name]]))
                outputs.append(OutputTensor(name, datatypes[name], arr.shape, arr, elsewhere=True))
                continue
            outputs.append(OutputTensor(name, datatypes[name], arr.shape, arr))
        return InferResponse(model_name=self.spec.name, model_version=self.version, id=request.id,
                             outputs=outputs, raw=prep.raw_output)

    def close(self) -> None:
        """Stop the scheduler: queued requests are answered UNAVAILABLE, batcher threads end."""
        self.scheduler.close()

    def retire(self, resolve: Callable[[str, str], Model], drain_s: float) -> bool:
        """Take this version out of service without failing what it already holds (a reload or unload).

        Requests that arrive from now on go to ``resolve(name, version)`` (the repository's lookup, which
        already maps to the new versions, or says the model is unloaded); those inside the model, queued
        in its batcher included, finish here for up to ``drain_s`` seconds; then the scheduler stops.
        False when some were still running at the timeout (they are answered UNAVAILABLE).
        """
        self._resolve = resolve
        drained = self.stats.wait_idle(drain_s)
        self.scheduler.close()
        return drained


class _Serving:
    """One request on its way through a model: what ``_complete`` and ``_fail`` need of its start."""

    __slots__ = ("request", "call", "begun", "start", "prep", "prepared")

    def __init__(self, request: InferRequest, call: Call) -> None:
        self.request, self.call = request, call
        self.begun = time.perf_counter_ns()
        self.start = self.begun - call.waited_ns  # the request's time counts from its arrival, parked time included
        self.prep: PreparedRequest | None = None
        self.prepared = 0


def _release(prep: PreparedRequest, scratch: ScratchPool) -> None:
    """Give back what a request held once its execution is over: shared-memory leases, scratch buffers."""
    if prep.shm is not None:
        prep.shm.release()
    if prep.scratch:
        scratch.give_back(prep.scratch)
