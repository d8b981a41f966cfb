"""The C-core serving loop (``--grpc-frontend core``): gRPC served on grpcio's own C-core wrapper, ``cygrpc``.

grpcio's sync server hands every call from its polling thread to a pool thread through condition variables
and a per-call Python state machine. This loop drives ``grpc._cython.cygrpc`` directly: poller threads share
one completion queue and carry each call from ``request_call`` to its final batch themselves. A unary call
costs three batches: at its start a receive-close batch (its completion says whether the client cancelled or
the deadline passed: what ``Call.is_active`` and the batcher's ``on_end`` read) and a receive-message batch;
then initial metadata, the answer and the status in one. The answers are those of ``grpc_methods``, so the
two front ends cannot answer differently.

Pollers. A request's work (its model run) happens on the poller that received it; ONNX Runtime releases the
GIL, so the other pollers go on. Before a poller starts such work it makes sure another one is polling (a
resting one is called, or one is started), so health calls, cancellations and new calls keep flowing while
models run. At most ``--handler-threads`` requests are worked on at once, and at most a model's ``work_bound``
of its own (one per instance); a request beyond either is parked, held by no thread, until a poller finishes
work and takes it (its own model's first). A request to a model with a dynamic batcher is queued there and its
poller goes on (``Rpc.later``): the batcher's thread that runs the batch answers it. A poller done with its
work rests on a lock of its own while another polls: each thread waiting on the completion queue is one more
that grpc core wakes. Both rules change where the process has one CPU (``single_cpu``): pollers do not rest,
and a model's gate lets one request more through, to wait for the first instance freed. Pollers beyond one end
after ``IDLE_EXIT_S`` idle.
A request's feeds may be in scratch buffers it holds until its execution is over (``server/scratch.py``'s
rule): a request run by its poller gives them back there once its run returned, a batched one on the
batcher's thread once its batch ran or it left the queue. Once a burst is over, each poller that served it
trims its own malloc arena (``Pollers.release_memory``).

Admission (``--max-concurrent-rpcs``) counts a call from its start, before its request arrived, until its
final batch completes; health calls are never counted. ``cygrpc`` is not grpcio's public API:
:func:`missing_pieces` checks at start that what this module uses is there (the server falls back to
grpcio's own server with a log line if not), and pyproject pins the grpcio versions tested.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import SimpleNamespace

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2

from tensorwire.errors import NotFound, RequestError
from tensorwire.server.allocator import thread_arena_trimmer
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
    answer_infer_then,
    answer_stream_request,
    answer_stream_request_then,
    answer_unary,
    draining_stream_answer,
    health_statuses,
    internal_message,
)
from tensorwire.server.grpc_options import channel_options, listen
from tensorwire.server.grpc_reflect import reflection_methods
from tensorwire.server.model import Model
from tensorwire.server.security import refusal_details, restriction_table

log = logging.getLogger("tensorwire.grpc")

IDLE_EXIT_S = 10.0
TICK_S = 1.0  # how often a poller without events looks up: whether to trim its arena, whether to end
QUIESCE_S = 300.0  # longest wait, after a cut grace, for the model runs still going before the process exits
# Calls requested from grpc core ahead of time, so that a burst of new calls never waits for a poller to ask.
CALLS_REQUESTED = 32
HEALTH_CHECK = f"/{HEALTH_SERVICE}/Check"
HEALTH_WATCH = f"/{HEALTH_SERVICE}/Watch"
GATED = frozenset((MODEL_INFER, MODEL_STREAM_INFER))  # methods whose requests wait for their model's gate
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_NEW_CALL = "new call"
_SHUTDOWN = "shutdown"
_OK = cygrpc.StatusCode.ok
LATER = object()  # what an answer function returns for a request handed to a dynamic batcher (Rpc.later)

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
        self._shared = [0, 0, 0, 0]  # the counts of pollers that ended, and of other threads (under the lock)
        self._lock = threading.Lock()

    def own_cell(self) -> None:
        """Give the calling thread (a poller) a cell of its own, counted without the lock."""
        cell = self._local.cell = [0, 0, 0, 0]
        with self._lock:
            self._cells.append(cell)

    def add(self, index: int, n: int = 1) -> None:
        try:
            cell = self._local.cell
        except AttributeError:  # not a poller (a batcher's thread answering, the health refresh): the lock
            with self._lock:
                self._shared[index] += n
            return
        cell[index] += n

    def total(self, index: int) -> int:
        with self._lock:
            return self._shared[index] + sum(cell[index] for cell in self._cells)

    def retire_thread(self) -> None:
        """Fold the calling thread's counts into the totals (a poller that ends), so cells do not pile up."""
        cell = getattr(self._local, "cell", None)
        if cell is None:
            return
        with self._lock:
            self._cells.remove(cell)
            self._shared = [a + b for a, b in zip(self._shared, cell)]
        del self._local.cell

    def pending_batches(self) -> int:
        """Started less completed; the completed are read first, so a batch started meanwhile is never
        missed (the answer is never below the truth)."""
        done = self.total(self.BATCHES_DONE)
        return self.total(self.BATCHES_STARTED) - done

    def open_calls(self) -> int:
        closed = self.total(self.CALLS_CLOSED)
        return self.total(self.CALLS_OPENED) - closed


class Gate:
    """One model version's share of the pollers: at most ``bound`` of its requests worked on at once (its
    ``work_bound``); the others wait here in arrival order, held by no thread, until one of its own finishes."""

    __slots__ = ("bound", "working", "parked")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.working = 0
        self.parked: collections.deque[Callable[[], None]] = collections.deque()


class Pollers:
    """The threads polling the completion queue, and the bounds on requests worked on at once: ``limit`` in
    all (--handler-threads) and each model's ``Gate``."""

    def __init__(self, queue: cygrpc.CompletionQueue, dispatch: Callable, limit: int, rest: bool = True) -> None:
        self._queue = queue
        self._dispatch = dispatch
        self.limit = limit
        self.rest = rest  # whether a poller done with its work rests while another polls (single_cpu says when)
        self._lock = threading.Lock()
        self.threads = 0
        self.working = 0  # pollers doing a request's work (at most ``limit``)
        # Jobs past ``limit``, with their gates (whose slot they do not hold yet). A gate's own parked jobs
        # imply jobs of it running, so "nothing works" is "nothing waits" too.
        self._parked: collections.deque[tuple[Callable[[], None], Gate | None]] = collections.deque()
        self._done = threading.Condition(self._lock)
        # Pollers at rest: each waits on a lock of its own, not on the queue, while another polls (every poller
        # waiting on the queue is one more thread grpc core wakes: bench/results/peers/README.md).
        self._resting: collections.deque[threading.Lock] = collections.deque()
        self._local = threading.local()
        self.on_start: Callable[[], None] = lambda: None  # run by a poller thread as it starts
        self.on_exit: Callable[[], None] = lambda: None  # run by a poller thread as it ends
        # Told of each job parked (+1), taken (-1) and done once taken (0), with the lock held: the data plane's
        # in-flight count (InFlight.hold), so that a stop's grace waits for parked requests and its report counts
        # them.
        self.on_hold: Callable[[int], None] = lambda _change: None
        self._away = 0  # requests handed to a dynamic batcher, not answered yet (Rpc.later)
        self.trim_epoch = 0  # bumped when a burst is over (release_memory)
        self._trim_arena = thread_arena_trimmer()

    def _polling(self) -> int:  # with the lock held
        return self.threads - self.working - len(self._resting)

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:  # with the lock held
        self.threads += 1
        threading.Thread(target=self._poll, name="tensorwire-poller", daemon=True).start()

    def _poll(self) -> None:
        """Take events until the queue shuts down; rest after a job while another poller polls; end early
        when idle and another poller is free (the count drops in the same locked step that decides it, so
        ``work`` never sees a leaving poller)."""
        me = self._local.state = SimpleNamespace(rest=False, wake=threading.Lock(), idle_ticks=0, dirty=False,
                                                 epoch=self.trim_epoch)
        me.wake.acquire()  # held but while _wake calls this poller
        self.on_start()
        while True:
            event = self._queue.poll(time.time() + TICK_S)
            kind = event.completion_type
            if kind == cygrpc.CompletionType.queue_shutdown:
                break
            if kind == cygrpc.CompletionType.queue_timeout:
                if not self._idle_tick(me):
                    return
                continue
            me.idle_ticks, me.dirty = 0, True
            try:
                self._dispatch(event)
            except Exception:  # a poller never dies of one call
                log.exception("internal error in the gRPC serving loop")
            event = None  # drop the call's references before waiting again
            if me.epoch != self.trim_epoch:
                self._trim(me)
            if me.rest and not self._rest(me):
                return
        with self._lock:
            self._leave()
            while self._resting:  # they poll again, see the queue shut down and end
                self._resting.pop().release()

    def _idle_tick(self, me: SimpleNamespace) -> bool:
        """A poller's look-up after TICK_S without events: trim its arena if asked; end (False) once idle for
        IDLE_EXIT_S while another poller polls."""
        me.idle_ticks += 1
        leaving = me.idle_ticks * TICK_S >= IDLE_EXIT_S
        self._trim(me, leaving)
        if leaving:
            with self._lock:
                if self._polling() > 1:
                    self._leave()
                    return False
        return True

    def _rest(self, me: SimpleNamespace) -> bool:
        """Wait until ``_wake`` calls this poller (True: poll again) or IDLE_EXIT_S pass (False: it ended).
        ``me.wake`` is a lock held while the poller rests, released by ``_wake`` (C code, unlike an Event)."""
        me.rest = False
        with self._lock:
            if self._polling() <= 1:  # the other poller went to work meanwhile
                return True
            self._resting.append(me.wake)
        for tick in range(1, round(IDLE_EXIT_S / TICK_S) + 1):
            if me.wake.acquire(timeout=TICK_S):
                return True
            self._trim(me, leaving=tick * TICK_S >= IDLE_EXIT_S)
        with self._lock:
            if me.wake in self._resting:  # not called: it ends
                self._resting.remove(me.wake)
                self._leave()
                return False
        return me.wake.acquire(blocking=False)  # called as the wait ran out: the release came, take it

    def release_memory(self) -> None:
        """A burst is over: each poller that served since trims its malloc arena's free top at its next look-up
        (within TICK_S; only a thread can trim its own arena: server/allocator.py)."""
        self.trim_epoch += 1

    def _trim(self, me: SimpleNamespace, leaving: bool = False) -> None:
        """Trim this poller's arena if it served since its last trim and a burst ended (or it is leaving)."""
        if not leaving and me.epoch == self.trim_epoch:
            return
        me.epoch = self.trim_epoch
        if me.dirty and self._trim_arena is not None:
            me.dirty = False
            self._trim_arena()

    def _wake(self) -> None:
        """With the lock held, once a poller took work: make sure one polls (call a resting one, or start one)."""
        if self._polling() < 1:
            if self._resting:
                self._resting.pop().release()  # the latest to rest: its stack is the warmest
            else:
                self._spawn()

    def _leave(self) -> None:  # with the lock held
        self.threads -= 1
        self._done.notify_all()
        self.on_exit()

    def work(self, job: Callable[[], None], gate: Gate | None = None) -> None:
        """Run ``job`` (a request's work) on this poller, another one polling meanwhile; park it when its
        gate's or all of ``limit`` slots are taken. A poller that finishes a job takes a parked one (its own
        gate's first) before it polls again. ``on_hold`` counts the jobs parked (+1 parked, -1 taken, 0 done)."""
        with self._lock:
            if gate is not None and gate.working >= gate.bound:
                gate.parked.append(job)
                self.on_hold(1)
                return
            if self.working >= self.limit:
                self._parked.append((job, gate))
                self.on_hold(1)
                return
            self.working += 1
            if gate is not None:
                gate.working += 1
            self._wake()
        parked = False  # whether ``job`` was taken from the parked ones
        while job is not None:
            try:
                job()
            except Exception:
                log.exception("internal error in the gRPC serving loop")
            with self._lock:
                if parked:
                    self.on_hold(0)  # it may have failed before its model: a drain waiting for it looks again
                job, gate = self._next(gate)
                parked = job is not None
                if job is None:
                    self.working -= 1
                    self._done.notify_all()
                    me = getattr(self._local, "state", None)  # None: not a poller (a batch refused inline)
                    if me is not None and self.rest and self._polling() > 1:
                        me.rest = True  # another polls: this one rests once its event is done

    def _next(self, freed: Gate | None) -> tuple[Callable[[], None] | None, Gate | None]:
        """With the lock held, after a job of gate ``freed`` ended: the job this poller takes next, its gate's
        slot taken (the poller's own slot it keeps); (None, None) if none may run."""
        if freed is not None:
            if freed.parked:
                self.on_hold(-1)
                return freed.parked.popleft(), freed
            freed.working -= 1
        while self._parked:
            job, gate = self._parked.popleft()
            if gate is not None and gate.working >= gate.bound:
                gate.parked.append(job)  # its model is busy: it waits for its model's turn instead
                continue
            if gate is not None:
                gate.working += 1
            self.on_hold(-1)
            return job, gate
        return None, None

    def away(self, change: int) -> None:
        """Count a request handed to a dynamic batcher (+1), or answered from there (-1)."""
        with self._lock:
            self._away += change
            if not self._away:
                self._done.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no job runs, waits or is away in a batcher; whether that happened."""
        with self._done:
            return self._done.wait_for(lambda: self.working == 0 and not self._parked and not self._away, timeout)

    def join(self, timeout: float) -> None:
        with self._done:
            self._done.wait_for(lambda: self.threads == 0, timeout)


class Rpc:
    """One call: its receive-close state, the callbacks run when it ends, its admission, its final batch."""

    __slots__ = ("loop", "call", "method", "deadline", "metadata", "admitted", "ended", "initial_sent",
                 "gated", "model", "waited_ns", "_callbacks", "_lock")

    def __init__(self, loop: CoreFrontend, event, method: str, admitted: bool) -> None:
        self.loop = loop
        self.call = event.call
        self.method = method
        self.deadline = event.call_details.deadline
        self.metadata = event.invocation_metadata
        self.admitted = admitted
        self.ended = False
        self.initial_sent = False
        self.gated = False  # its requests are ModelInfer requests, worked on under their model's gate
        self.model: Model | None = None  # the model of the request being answered, when it was looked up
        self.waited_ns = 0  # how long the request being answered waited for a poller
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
        return Call.of_core(self.deadline, self.is_active, self.on_end, token, self.waited_ns)

    def work(self, request: bytes, respond: Callable[[bytes], None]) -> None:
        """Have a poller run ``respond`` for ``request``: under its model's gate when the call is gated (the
        model is looked up first; a lookup that fails is left to the answer, which raises it again)."""
        model = gate = None
        if self.gated:
            try:
                model = self.loop.plane.model_of(request)
            except Exception:
                pass
            else:
                gate = self.loop.gate(model)
        received = time.perf_counter_ns()

        def job() -> None:
            self.model, self.waited_ns = model, time.perf_counter_ns() - received
            try:
                respond(request)
            finally:
                self.model = None  # a stream lives on: it must not keep an unloaded model's sessions

        self.loop.pollers.work(job, gate)

    def later(self, start: Callable[[Callable[[bytes | None, BaseException | None], None]], None]) -> object:
        """Hand this request to its model's dynamic batcher: ``start(then)`` queues it, holding no poller, and
        ``then(answer, error)`` answers it from the batcher's thread (``_answered``). Counted away from the
        pollers meanwhile, so that a stop waits for it. Returns LATER, for the answer function to return."""
        pollers = self.loop.pollers
        pollers.away(1)

        def then(answer: bytes | None, error: BaseException | None) -> None:
            try:
                self._answered(answer, error)
            finally:
                pollers.away(-1)

        try:
            start(then)
        except BaseException:
            pollers.away(-1)
            raise
        return LATER

    def _answered(self, answer: bytes | None, error: BaseException | None) -> None:
        raise NotImplementedError  # the calls that take ModelInfer requests answer later

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
            self.work(request, self._respond)

    def _respond(self, request: bytes) -> None:
        try:
            answer = self.answer(request, self)
        except Exception as exc:
            self.fail(exc)
        else:
            if answer is not LATER:
                self.finish(message=answer)

    def _answered(self, answer: bytes | None, error: BaseException | None) -> None:
        if error is not None:
            self.fail(error)
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
            self.work(request, self._respond)

    def _respond(self, request: bytes) -> None:
        try:
            answer, last = self.answer(request, self)
        except Exception as exc:
            self.forget_callbacks()
            self.fail(exc)
            return
        if answer is not LATER:
            self._send(answer, last)

    def _answered(self, answer: bytes | None, error: BaseException | None) -> None:
        if error is not None:
            self.forget_callbacks()
            self.fail(error)
        else:
            self._send(answer, False)

    def _send(self, answer: bytes, last: bool) -> None:
        """Send a request's answer: the last one with the status, or with the next receive."""
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
        # Each model version's gate; a model unloaded (and no longer referenced) takes its gate with it.
        self._gates: weakref.WeakKeyDictionary[Model, Gate] = weakref.WeakKeyDictionary()
        self.single_cpu = False  # whether the process runs on one CPU: set by ``start`` (see there)

    def gate(self, model: Model) -> Gate | None:
        """``model``'s gate (None: its requests are not bounded, a batcher's)."""
        gate = self._gates.get(model)
        if gate is None:
            bound = model.work_bound
            if bound is None:
                return None
            with self._lock:
                gate = self._gates.setdefault(model, Gate(bound + self.single_cpu))
        return gate

    def _method_table(self) -> dict[str, tuple[type[Rpc], Callable[[Rpc], Callable]]]:
        """Method path -> (the call's kind, a function of the call giving its answer function)."""
        plane = self.plane
        methods: dict[str, tuple[type[Rpc], Callable[[Rpc], Callable]]] = {}
        for name in UNARY:
            def unary(request: bytes, rpc: Rpc, name: str = name) -> bytes:
                return answer_unary(plane, name, request, rpc.caller())
            methods[SERVICE_PREFIX + name] = (Unary, lambda _rpc, f=unary: f)

        def infer(request: bytes, rpc: Rpc) -> bytes | object:
            model = rpc.model
            if model is not None and model.batches:  # it waits in the batcher's queue holding no poller
                return rpc.later(lambda then: answer_infer_then(plane, request, rpc.caller(), model, then))
            return answer_infer(plane, request, rpc.caller(), model)

        def stream_infer(request: bytes, rpc: Rpc) -> tuple[bytes | object, bool]:
            if plane.draining.is_set():
                return draining_stream_answer(plane), True
            model = rpc.model
            if model is not None and model.batches:
                return rpc.later(lambda then: answer_stream_request_then(
                    plane, request, rpc.caller(), model, lambda answer: then(answer, None))), False
            return answer_stream_request(plane, request, rpc.caller(), model), False

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
        # Two choices measured opposite ways on one CPU and on several (bench/results/peers/README.md): on one,
        # waking a resting poller, or the poller that freed an instance taking the next request itself, is a
        # switch on that same core each time, so pollers do not rest and a gate lets one request more wait on
        # the instance; on several, each idle poller on the queue and each hand-off through the instance costs
        # more. Read here, after --cpu-affinity pinned the process.
        self.single_cpu = len(os.sched_getaffinity(0)) == 1
        self.pollers = Pollers(self._queue, self._dispatch, s.handler_thread_count, rest=not self.single_cpu)
        self.pollers.on_start = self.tally.own_cell
        self.pollers.on_hold = self.plane.in_flight.hold
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
        rpc.gated = method in GATED
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
    def release_memory(self) -> None:
        """After a burst: the pollers trim their malloc arenas (``Pollers.release_memory``)."""
        if self.pollers is not None:
            self.pollers.release_memory()

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
