"""The C-core serving loop (``--grpc-frontend core``): gRPC served on grpcio's own C-core wrapper, ``cygrpc``.

grpcio's sync server hands every call from its polling thread to a pool thread through condition variables
and a per-call Python state machine. This loop drives ``grpc._cython.cygrpc`` directly: poller threads share
one completion queue and carry each call from ``request_call`` to its final batch themselves. A unary call
costs three batches: at its start a receive-close batch (its completion says whether the client cancelled or
the deadline passed: what ``Call.is_active`` and the batcher's ``on_end`` read) and a receive-message batch;
then initial metadata, the answer and the status in one. The answers are those of ``grpc_methods``, so the
two front ends cannot answer differently.

Pollers. A request's work (its model run) happens on the poller that received it; ONNX Runtime releases the
GIL, so the other pollers go on. Before a poller starts such work it makes sure another one is polling (one
is started if not), so health calls, cancellations and new calls keep flowing while models run. At most
``--handler-threads`` requests are worked on at once; a request beyond that is parked, held by no thread,
until a poller finishes its work and takes it. Pollers beyond one end after ``IDLE_EXIT_S`` without events.
A request's feeds may be in scratch buffers it holds until its execution is over (``server/scratch.py``'s
rule); its poller waits for the batch they are in before it answers or takes anything else.

Admission (``--max-concurrent-rpcs``) counts a call from its start, before its request arrived, until its
final batch completes; health calls are never counted. ``cygrpc`` is not grpcio's public API:
:func:`missing_pieces` checks at start that what this module uses is there (the server falls back to
grpcio's own server with a log line if not), and pyproject pins the grpcio versions tested.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2

from tensorwire.errors import NotFound, RequestError
from tensorwire.server.call import Call
from tensorwire.server.dataplane import ADMISSION_REFUSED, Admission, DataPlane
from tensorwire.server.grpc_methods import (
    HEALTH_METHODS,
    HEALTH_SERVICE,
    MODEL_INFER,
    MODEL_STREAM_INFER,
    SERVICE_PREFIX,
    UNARY,
    answer_infer,
    answer_stream_request,
    answer_unary,
    draining_stream_answer,
    health_statuses,
    internal_message,
)
from tensorwire.server.grpc_options import channel_options, listen
from tensorwire.server.grpc_reflect import reflection_methods
from tensorwire.server.security import refusal_details, restriction_table

log = logging.getLogger("tensorwire.grpc")

IDLE_EXIT_S = 10.0
QUIESCE_S = 300.0  # longest wait, after a cut grace, for the model runs still going before the process exits
# Calls requested from grpc core ahead of time, so that a burst of new calls never waits for a poller to ask.
CALLS_REQUESTED = 32
HEALTH_CHECK = f"/{HEALTH_SERVICE}/Check"
HEALTH_WATCH = f"/{HEALTH_SERVICE}/Watch"
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_NEW_CALL = "new call"
_SHUTDOWN = "shutdown"
_OK = cygrpc.StatusCode.ok

# What this module uses of cygrpc, checked at start (missing_pieces).
REQUIRED = {
    "cygrpc": ("Server", "CompletionQueue", "CompletionType", "StatusCode", "ReceiveCloseOnServerOperation",
               "ReceiveMessageOperation", "SendInitialMetadataOperation", "SendMessageOperation",
               "SendStatusFromServerOperation", "Call"),
    "Server": ("register_completion_queue", "add_http2_port", "start", "request_call", "shutdown",
               "cancel_all_calls"),
    "Call": ("start_server_batch", "peer"),
    "CompletionType": ("queue_shutdown", "queue_timeout", "operation_complete"),
}


def missing_pieces() -> list[str]:
    """The cygrpc names this loop needs that this grpcio lacks (empty: the loop can run)."""
    missing = [f"cygrpc.{name}" for name in REQUIRED["cygrpc"] if not hasattr(cygrpc, name)]
    for owner in ("Server", "Call", "CompletionType"):
        if hasattr(cygrpc, owner):
            missing += [f"cygrpc.{owner}.{name}" for name in REQUIRED[owner]
                        if not hasattr(getattr(cygrpc, owner), name)]
    if not missing:
        try:  # the constructor's signature too: (channel arguments, xds)
            cygrpc.Server((), False)
        except TypeError as exc:
            missing.append(f"cygrpc.Server(arguments, xds) ({exc})")
    return missing


def _status(code: int, details: str = "") -> cygrpc.Operation:
    return cygrpc.SendStatusFromServerOperation(None, code, details, 0)


def _status_of(exc: BaseException) -> tuple[int, str]:
    """The status a failed request is answered with (the log has the traceback of an internal error)."""
    if isinstance(exc, RequestError):
        return exc.code.value[0], str(exc)
    log.error("internal error in handler", exc_info=exc)
    return cygrpc.StatusCode.internal, internal_message(exc)


class Tally:
    """Counters kept per thread and summed when read: the hot path counts without a lock (a lock shared by
    every poller was measured to be the loop's costliest line, its holders being switched out by the GIL)."""

    BATCHES_STARTED, BATCHES_DONE, CALLS_OPENED, CALLS_CLOSED = range(4)

    def __init__(self) -> None:
        self._local = threading.local()
        self._cells: list[list[int]] = []
        self._retired = [0, 0, 0, 0]  # the counts of threads that ended
        self._lock = threading.Lock()

    def add(self, index: int, n: int = 1) -> None:
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._local.cell = [0, 0, 0, 0]
            with self._lock:
                self._cells.append(cell)
        cell[index] += n

    def total(self, index: int) -> int:
        with self._lock:
            return self._retired[index] + sum(cell[index] for cell in self._cells)

    def retire_thread(self) -> None:
        """Fold the calling thread's counts into the totals (a poller that ends), so cells do not pile up."""
        cell = getattr(self._local, "cell", None)
        if cell is None:
            return
        with self._lock:
            self._cells.remove(cell)
            self._retired = [a + b for a, b in zip(self._retired, cell)]
        del self._local.cell

    def pending_batches(self) -> int:
        """Started less completed; the completed are read first, so a batch started meanwhile is never
        missed (the answer is never below the truth)."""
        done = self.total(self.BATCHES_DONE)
        return self.total(self.BATCHES_STARTED) - done

    def open_calls(self) -> int:
        closed = self.total(self.CALLS_CLOSED)
        return self.total(self.CALLS_OPENED) - closed


class Pollers:
    """The threads polling the completion queue, and the bound on requests worked on at once."""

    def __init__(self, queue: cygrpc.CompletionQueue, dispatch: Callable, limit: int) -> None:
        self._queue = queue
        self._dispatch = dispatch
        self.limit = limit
        self._lock = threading.Lock()
        self.threads = 0
        self.working = 0  # pollers doing a request's work (at most ``limit``)
        self._parked: collections.deque[Callable[[], None]] = collections.deque()
        self._done = threading.Condition(self._lock)
        self.on_exit: Callable[[], None] = lambda: None  # run by a poller thread as it ends

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:  # with the lock held
        self.threads += 1
        threading.Thread(target=self._poll, name="tensorwire-poller", daemon=True).start()

    def _poll(self) -> None:
        """Take events until the queue shuts down; end early when idle and another poller is free (the
        count drops in the same locked step that decides it, so ``work`` never sees a leaving poller)."""
        while True:
            event = self._queue.poll(time.time() + IDLE_EXIT_S)
            kind = event.completion_type
            if kind == cygrpc.CompletionType.queue_shutdown:
                break
            if kind == cygrpc.CompletionType.queue_timeout:
                with self._lock:
                    if self.threads - self.working > 1:
                        self._leave()
                        return
                continue
            try:
                self._dispatch(event)
            except Exception:  # a poller never dies of one call
                log.exception("internal error in the gRPC serving loop")
            event = None  # drop the call's references before waiting again
        with self._lock:
            self._leave()

    def _leave(self) -> None:  # with the lock held
        self.threads -= 1
        self._done.notify_all()
        self.on_exit()

    def work(self, job: Callable[[], None]) -> None:
        """Run ``job`` (a request's work) on this poller, another one polling meanwhile; park it when
        ``limit`` jobs already run. A poller that finishes a job takes the parked ones before it polls again."""
        with self._lock:
            if self.working >= self.limit:
                self._parked.append(job)
                return
            self.working += 1
            if self.threads - self.working < 1:
                self._spawn()
        while job is not None:
            try:
                job()
            except Exception:
                log.exception("internal error in the gRPC serving loop")
            with self._lock:
                job = self._parked.popleft() if self._parked else None
                if job is None:
                    self.working -= 1
                    self._done.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no job runs or waits; whether that happened."""
        with self._done:
            return self._done.wait_for(lambda: self.working == 0 and not self._parked, timeout)

    def join(self, timeout: float) -> None:
        with self._done:
            self._done.wait_for(lambda: self.threads == 0, timeout)


class Rpc:
    """One call: its receive-close state, the callbacks run when it ends, its admission, its final batch."""

    __slots__ = ("loop", "call", "method", "deadline", "metadata", "admitted", "ended", "initial_sent",
                 "_callbacks", "_lock")

    def __init__(self, loop: CoreFrontend, event, method: str, admitted: bool) -> None:
        self.loop = loop
        self.call = event.call
        self.method = method
        self.deadline = event.call_details.deadline
        self.metadata = event.invocation_metadata
        self.admitted = admitted
        self.ended = False
        self.initial_sent = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        loop.call_opened()

    def begin(self) -> None:
        self.batch((cygrpc.ReceiveCloseOnServerOperation(0),), self._on_close)

    def batch(self, operations: tuple, tag: Callable) -> None:
        """Start a batch whose completion calls ``tag``; one grpc core refuses is completed as failed."""
        self.loop.batch_started()
        if self.call.start_server_batch(operations, tag) != 0:
            log.error("grpc core refused a batch of %s", self.method)
            self.loop.batch_finished()
            tag(None)

    def _on_close(self, event) -> None:
        with self._lock:
            self.ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("internal error in a call-end callback")
        if self.method in HEALTH_METHODS:  # its own bound: held until the call ends, whatever ended it
            self.loop.health_admission.leave()
        self.loop.call_closed()

    def on_end(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` when the call ends; False (not registered) if it already did."""
        with self._lock:
            if self.ended:
                return False
            self._callbacks.append(callback)
            return True

    def forget_callbacks(self) -> None:
        """A stream's request is answered: what it registered no longer concerns the stream."""
        with self._lock:
            self._callbacks.clear()

    def is_active(self) -> bool:
        return not self.ended

    def caller(self) -> Call:
        header = self.loop.plane.token_header  # the shared-memory token, read only where it is required
        token = None if header is None else next((v for k, v in self.metadata if k == header), None)
        return Call.of_core(self.deadline, self.is_active, self.on_end, token)

    def with_initial(self, operations: tuple) -> tuple:
        """``operations`` preceded by the initial metadata the first time the call sends anything."""
        if self.initial_sent:
            return operations
        self.initial_sent = True
        return (cygrpc.SendInitialMetadataOperation(None, 0), *operations)

    def finish(self, code: int = _OK, details: str = "", message: bytes | None = None) -> None:
        """The final batch: the message if any and the status."""
        sends = (cygrpc.SendMessageOperation(message, 0),) if message is not None else ()
        self.batch(self.with_initial((*sends, _status(code, details))), self._on_finished)

    def fail(self, exc: BaseException) -> None:
        self.finish(*_status_of(exc))

    def _on_finished(self, _event) -> None:
        if self.admitted:
            self.admitted = False
            self.loop.plane.admission.leave()


Answer = Callable[[bytes, Rpc], bytes]  # (request bytes, the call) -> answer bytes; RequestError on failure


class Unary(Rpc):
    """A unary call: its request, its answer (worked on under the pollers' bound unless a health call)."""

    __slots__ = ("answer",)

    def begin(self) -> None:
        super().begin()
        self.batch((cygrpc.ReceiveMessageOperation(0),), self._on_message)

    def _on_message(self, event) -> None:
        request = event.batch_operations[0].message() if event is not None else None
        if request is None:  # cancelled, over the size bound (grpc core answered), or no message at all
            self.finish(cygrpc.StatusCode.unimplemented, f'"{self.method}" requires exactly one request message.')
        elif self.method in HEALTH_METHODS:
            self._respond(request)
        else:
            self.loop.pollers.work(lambda: self._respond(request))

    def _respond(self, request: bytes) -> None:
        try:
            answer = self.answer(request, self)
        except Exception as exc:
            self.fail(exc)
        else:
            self.finish(message=answer)


StreamAnswer = Callable[[bytes, Rpc], "tuple[bytes, bool]"]  # -> (answer bytes, whether it is the last)


class Stream(Rpc):
    """A bidirectional stream answered in order: one request is received, worked on and answered before the
    next is received; the client's half-close ends it with OK. An answer and the next receive go in one
    batch, which completes with the next request: one batch and one event per request."""

    __slots__ = ("answer",)

    def begin(self) -> None:
        super().begin()
        self._receive()

    def _receive(self) -> None:
        self.batch((cygrpc.ReceiveMessageOperation(0),), self._on_message)

    def _on_message(self, event) -> None:
        """The next request (the receive is the batch's last operation); none: the client is done, or the
        call is gone (the status batch then fails and gives admission back)."""
        request = event.batch_operations[-1].message() if event is not None else None
        if request is None:
            self.finish()
        else:
            self.loop.pollers.work(lambda: self._respond(request))

    def _respond(self, request: bytes) -> None:
        try:
            answer, last = self.answer(request, self)
        except Exception as exc:
            self.fail(exc)
            return
        finally:
            self.forget_callbacks()
        if last:
            self.finish(message=answer)
        else:
            self.batch(self.with_initial((cygrpc.SendMessageOperation(answer, 0),
                                          cygrpc.ReceiveMessageOperation(0))), self._on_message)


class Watch(Rpc):
    """grpc.health.v1 Watch: the service's status now, then each change, until the client leaves or the
    server stops (NOT_SERVING, then OK). One send at a time; a change during a send follows it."""

    __slots__ = ("service", "sent", "sending", "closing")

    def begin(self) -> None:
        self.service: str | None = None
        self.sent: int | None = None
        self.sending = False
        self.closing = False
        super().begin()
        self.batch((cygrpc.ReceiveMessageOperation(0),), self._on_message)

    def _on_message(self, event) -> None:
        if event is None or not event.success:  # the call ended before its request came
            if self.is_active():
                self.finish(cygrpc.StatusCode.cancelled, "the call ended before its request arrived")
            return
        request = event.batch_operations[0].message()
        if request is None:  # grpcio's answer to a Watch without its request
            self.finish(cygrpc.StatusCode.unimplemented, f'"{self.method}" requires exactly one request message.')
            return
        try:
            self.service = health_pb2.HealthCheckRequest.FromString(request).service
        except Exception as exc:
            self.fail(exc)
            return
        self.loop.watch(self)

    def _on_close(self, event) -> None:
        super()._on_close(event)
        self.loop.unwatch(self)

    def push(self, statuses: dict[str, int], closing: bool = False) -> None:
        """Send the service's status if it changed; ``closing``: end the stream after it."""
        with self._lock:
            self.closing = self.closing or closing
            status = statuses.get(self.service, _SERVICE_UNKNOWN)
            if self.sending or self.ended or self.service is None:
                return
            if status == self.sent:
                if self.closing:
                    self.sending = True  # nothing more may be sent
                    self.finish()
                return
            self.sending, self.sent = True, status
            operations = self.with_initial((cygrpc.SendMessageOperation(
                health_pb2.HealthCheckResponse(status=status).SerializeToString(), 0),))
        self.batch(operations, self._on_sent)

    def _on_sent(self, event) -> None:
        if event is None or not event.success:  # still "sending": no push may start a batch meanwhile
            self.finish(cygrpc.StatusCode.cancelled, "the call ended while an answer was being sent")
            return
        with self._lock:
            self.sending = False
        self.push(self.loop.statuses)


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 10 ms for up to ``timeout`` seconds (only the stop waits this way)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class CoreFrontend:
    """The gRPC server on grpcio's C-core: pollers on one completion queue (see the module docstring)."""

    name = "core"

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.port = 0
        self.statuses: dict[str, int] = {}
        self._server: cygrpc.Server | None = None
        self._queue: cygrpc.CompletionQueue | None = None
        self.pollers: Pollers | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self.tally = Tally()  # batches (request_call included) and calls, started and completed
        # Health calls (Check, Watch): counted apart from --max-concurrent-rpcs, bounded as generously.
        self.health_admission = Admission(plane.settings.max_concurrent_rpcs)
        self._watchers: set[Watch] = set()
        self._shutdown = threading.Event()
        self._stopped = threading.Event()
        self._restrictions = restriction_table(plane.settings)
        self._methods = self._method_table()

    def _method_table(self) -> dict[str, tuple[type[Rpc], Callable[[Rpc], Callable]]]:
        """Method path -> (the call's kind, a function of the call giving its answer function)."""
        plane = self.plane
        methods: dict[str, tuple[type[Rpc], Callable[[Rpc], Callable]]] = {}
        for name in UNARY:
            def unary(request: bytes, rpc: Rpc, name: str = name) -> bytes:
                return answer_unary(plane, name, request, rpc.caller())
            methods[SERVICE_PREFIX + name] = (Unary, lambda _rpc, f=unary: f)

        def infer(request: bytes, rpc: Rpc) -> bytes:
            return answer_infer(plane, request, rpc.caller())

        def stream_infer(request: bytes, rpc: Rpc) -> tuple[bytes, bool]:
            if plane.draining.is_set():
                return draining_stream_answer(plane), True
            return answer_stream_request(plane, request, rpc.caller()), False

        methods[MODEL_INFER] = (Unary, lambda _rpc: infer)
        methods[MODEL_STREAM_INFER] = (Stream, lambda _rpc: stream_infer)
        methods[HEALTH_CHECK] = (Unary, lambda _rpc: self._health_check)
        methods[HEALTH_WATCH] = (Watch, lambda _rpc: None)
        methods.update({path: (Stream, open_stream) for path, open_stream in reflection_methods().items()})
        return methods

    def _health_check(self, request: bytes, _rpc: Rpc) -> bytes:
        service = health_pb2.HealthCheckRequest.FromString(request).service
        status = self.statuses.get(service)
        if status is None:
            raise NotFound(f"unknown service {service!r}")
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    # -- starting ----------------------------------------------------------------------------------------
    def start(self) -> int:
        s = self.plane.settings
        self._queue = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(channel_options(s)), False)
        self._server.register_completion_queue(self._queue)
        self.port = listen(s, self._add_port)
        self._server.start()
        self.statuses = health_statuses(self.plane)
        self.pollers = Pollers(self._queue, self._dispatch, s.handler_thread_count)
        self.pollers.on_exit = self.tally.retire_thread
        for _ in range(CALLS_REQUESTED):
            self._request_call()
        self.pollers.start()
        return self.port

    def _add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        return self._server.add_http2_port(address.encode(), credentials._credentials if credentials else None)

    def _request_call(self) -> None:
        """Ask grpc core for the next call; none once the stop began (cygrpc refuses it then, and grpc core
        fails one that races the shutdown, which the poller sees as a failed new-call event)."""
        if self._stopping:
            return
        self.tally.add(Tally.BATCHES_STARTED)
        try:
            self._server.request_call(self._queue, self._queue, _NEW_CALL)
        except ValueError:  # the server began to shut down meanwhile
            self.tally.add(Tally.BATCHES_DONE)

    def batch_started(self) -> None:
        self.tally.add(Tally.BATCHES_STARTED)

    def batch_finished(self) -> None:
        self.tally.add(Tally.BATCHES_DONE)

    def call_opened(self) -> None:
        self.tally.add(Tally.CALLS_OPENED)

    def call_closed(self) -> None:
        self.tally.add(Tally.CALLS_CLOSED)

    # -- serving -----------------------------------------------------------------------------------------
    def _dispatch(self, event) -> None:
        tag = event.tag
        try:
            if tag is _NEW_CALL:
                self._on_new_call(event)
            elif tag is _SHUTDOWN:
                self._shutdown.set()
            else:
                tag(event)
        finally:
            if tag is not _SHUTDOWN:
                self.batch_finished()

    def _on_new_call(self, event) -> None:
        if not event.success:  # the server is shutting down
            return
        self._request_call()
        method = event.call_details.method.decode()
        rule = self._restrictions.get(method)  # before the lookup, as grpcio's interceptor: served or not
        if rule is not None and not rule.allows(event.invocation_metadata):
            self._reject(event, cygrpc.StatusCode.unavailable, refusal_details(rule.header))
            return
        entry = self._methods.get(method)
        if entry is None:
            self._reject(event, cygrpc.StatusCode.unimplemented, "Method not found!")
            return
        admitted = method not in HEALTH_METHODS
        # health calls have a bound of their own, so that --max-concurrent-rpcs never refuses a probe
        if not (self.plane.admission if admitted else self.health_admission).try_enter():
            self._reject(event, cygrpc.StatusCode.resource_exhausted, ADMISSION_REFUSED)
            return
        kind, answer_of = entry
        rpc = kind(self, event, method, admitted)
        try:
            if kind is not Watch:
                rpc.answer = answer_of(rpc)
        except Exception as exc:
            rpc.begin()
            rpc.fail(exc)
            return
        rpc.begin()

    def _reject(self, event, code: int, details: str) -> None:
        """Answer a call that is not served with ``code``, in one batch (as grpcio's server does)."""
        call = event.call
        self.batch_started()
        call.start_server_batch((cygrpc.SendInitialMetadataOperation(None, 0),
                                 cygrpc.ReceiveCloseOnServerOperation(0), _status(code, details)),
                                lambda _event, call=call: None)

    # -- health ------------------------------------------------------------------------------------------
    def watch(self, rpc: Watch) -> None:
        with self._lock:
            closing = self._stopping
            self._watchers.add(rpc)
        if not rpc.is_active():  # it ended (and unwatched) before it was added: it must not stay
            self.unwatch(rpc)
            return
        rpc.push(self.statuses, closing)

    def unwatch(self, rpc: Watch) -> None:
        with self._lock:
            self._watchers.discard(rpc)

    def refresh_health(self) -> None:
        """grpc.health.v1's statuses from the data plane (the server calls this twice a second); the
        watchers whose service changed are told."""
        with self._lock:
            if self._stopping:
                return
            watchers = list(self._watchers)
        self.statuses = health_statuses(self.plane)
        for rpc in watchers:
            rpc.push(self.statuses)

    # -- stopping ----------------------------------------------------------------------------------------
    def stop(self, grace: float) -> None:
        """Refuse new calls, give those in flight ``grace`` seconds, then cancel what is left. Health turns
        NOT_SERVING and Watch streams end, so they do not hold the drain."""
        if self._server is None:
            return
        with self._lock:
            self._stopping = True
            watchers = list(self._watchers)
        self.statuses = dict.fromkeys(self.statuses, _NOT_SERVING)
        for rpc in watchers:
            rpc.push(self.statuses, closing=True)
        self._server.shutdown(self._queue, _SHUTDOWN)
        if not self._shutdown.wait(grace):
            self._server.cancel_all_calls()  # their receive-close completes now; a model run may go on
            _until(lambda: self.tally.open_calls() == 0, 5.0)
        self._close_queue()
        self._server = None
        self._stopped.set()

    def _close_queue(self) -> None:
        """Shut the completion queue down once no batch can be started on it any more (grpc core aborts the
        process on a batch started on a queue that is shut down). Work still running after a cut grace is
        waited for on a thread of its own, which the interpreter joins before it exits: a model run is never
        cut off by the process's end."""
        if self._shutdown.is_set() and self.pollers.idle(0.1):
            self._quiesce_and_close()
            return
        log.info("gRPC serving loop: requests still running after the grace; their answers are dropped")
        threading.Thread(target=self._quiesce_and_close, name="tensorwire-grpc-close").start()

    def _quiesce_and_close(self) -> None:
        if not self.pollers.idle(QUIESCE_S):
            log.warning("gRPC serving loop: requests still running %.0f s after the stop", QUIESCE_S)
            return
        if not self._shutdown.wait(5.0) or not _until(lambda: self.tally.pending_batches() == 0, 5.0):
            log.info("gRPC serving loop: %d batch(es) still pending at the stop", self.tally.pending_batches())
            return
        self._queue.shutdown()
        self.pollers.join(5.0)

    def wait(self) -> None:
        self._stopped.wait()
