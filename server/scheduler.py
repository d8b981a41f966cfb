"""How requests reach a model's instances: directly, or through a dynamic batcher.

A model has ``instance_group { count }`` instances (ORT sessions). Without dynamic batching a request
waits for a free instance and runs alone (Triton's default scheduler). With ``dynamic_batching`` a
request joins a bounded queue; one worker per instance takes the oldest request, gathers queued
requests whose non-batch shapes, datatypes and requested outputs match, up to ``max_batch_size`` rows,
waits at most ``max_queue_delay_microseconds`` for more (less once a ``preferred_batch_size`` is
reached; not at all with ``optimization { eager_batching: true }``), runs them as one batch and splits
the outputs back. Requests are validated before they join, so a bad one never reaches a batch;
expired and cancelled ones are dropped before they run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tensorwire.errors import Cancelled, DeadlineExceeded, Internal, RequestError, ResourceExhausted, Unavailable
from tensorwire.server.session import Runner
from tensorwire.server.settings import ServerSettings
from tensorwire.server.statistics import ModelStatistics, RequestTimes
from tensorwire.server.validation import PreparedRequest

if TYPE_CHECKING:
    from tensorwire.server.call import Call
    from tensorwire.server.model_config import ModelSpec

log = logging.getLogger("tensorwire.scheduler")


@dataclass(frozen=True, slots=True)
class Execution:
    """What a scheduler hands back for one request: its outputs and the time each phase took for it."""

    outputs: list[np.ndarray]
    batch_size: int  # rows of the batch the request ran in
    queue_ns: int = 0  # waiting for an instance (or in the batcher's queue)
    input_ns: int = 0  # gathering the batch's inputs
    infer_ns: int = 0  # the instance running


class Scheduler(Protocol):
    """How a request reaches an instance.

    A request's feeds may live in its scratch buffers, which it gives back when ``execute`` returns
    (server/scratch.py's rule), so ``execute`` must not return while an instance may still read them, even
    when it raises (a deadline that passes while the request's batch runs waits for that batch).
    The deadline is checked here, and only here: right before an instance starts on the request.
    """

    # Requests worth working on at once; a transport may park the rest holding no thread (the core loop does,
    # server/grpc_core.py). None: no bound (a batcher fills its batches from the requests waiting in it).
    work_bound: int | None

    def execute(self, prep: PreparedRequest, call: Call) -> Execution: ...

    def close(self) -> None: ...


def _expired(model: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline passed (or the call was cancelled) while the request waited for model "
                            f"'{model}'; nothing was computed")


class DirectScheduler:
    """One request per execution; waits for a free instance."""

    def __init__(self, name: str, runners: list[Runner], stats: ModelStatistics) -> None:
        self.name = name
        self.stats = stats
        # Free instances. SimpleQueue's get/put are C code (a threading.Semaphore is Python code over a
        # Condition: several microseconds per request).
        self._free: queue.SimpleQueue[Runner] = queue.SimpleQueue()
        for runner in runners:
            self._free.put(runner)
        self.work_bound = len(runners)  # one request per instance can make progress at once

    def execute(self, prep: PreparedRequest, call: Call) -> Execution:
        t0 = time.perf_counter_ns()
        try:
            runner = self._free.get(timeout=call.remaining())
        except queue.Empty:
            raise _expired(self.name) from None
        try:
            t1 = time.perf_counter_ns()
            if call.abandoned():  # timed out or cancelled (a shutdown's grace ran out, say) while it waited
                raise _expired(self.name)
            outputs = runner(prep.feeds, prep.output_names)
            t2 = time.perf_counter_ns()
        finally:
            self._free.put(runner)
        self.stats.record_execution(prep.batch_size, RequestTimes(compute_infer_ns=t2 - t1))
        return Execution(outputs, prep.batch_size, queue_ns=t1 - t0, infer_ns=t2 - t1)

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _Pending:
    prep: PreparedRequest
    key: tuple
    rows: int
    call: Call
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    taken: bool = False  # in a batch that is being formed or run
    result: Execution | None = None
    error: BaseException | None = None
    # Set by ``submit``: run once with (result, error) when the request ran or left the queue; nobody waits.
    then: Callable[[Execution | None, BaseException | None], None] | None = None

    def finish(self, result: Execution | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()
        if self.then is not None:
            try:
                self.then(result, error)
            except Exception:  # the batch's other requests are still answered
                log.exception("internal error answering a request of a batch")


_thread_state = threading.local()
PR_SET_TIMERSLACK = 29


def _precise_timers() -> None:
    """Let this thread's timed waits wake on time: Linux adds up to 50 us of timer slack to each (its
    documented default), which the batch delay would pay at every low-load request. Once per thread; a
    no-op elsewhere."""
    if getattr(_thread_state, "precise", False):
        return
    _thread_state.precise = True
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def batch_key(prep: PreparedRequest) -> tuple:
    """Requests may share a batch when everything but the batch dimension matches."""
    return (tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(prep.feeds.items())),
            tuple(prep.output_names), prep.raw_output)


class DynamicBatcher:
    """A bounded queue in front of a pool of instances.

    One worker thread per instance, and one more, form and run batches. At low load a request that ``execute``s
    on an idle batcher (empty queue, a free instance) forms and runs its batch on its own thread instead, which
    saves two thread hand-offs; requests that arrive meanwhile join that batch as usual. A request that is
    ``submit``ted never waits on its thread: a worker runs its batch and answers it.
    """

    def __init__(self, name: str, runners: list[Runner], stats: ModelStatistics, max_batch_size: int,
                 preferred_batch_sizes: list[int], max_queue_delay_us: int, max_queue_size: int,
                 eager: bool = False) -> None:
        self.name = name
        # Triton's optimization.eager_batching: an idle instance takes what is queued at once instead of
        # waiting out the delay; batches still form from what arrives while the instances are busy.
        self.eager = eager
        self.stats = stats
        self.max_batch_size = max_batch_size
        self.preferred = sorted(s for s in preferred_batch_sizes if 0 < s <= max_batch_size)
        self.max_delay_ns = max_queue_delay_us * 1000
        self.max_queue_size = max_queue_size
        self.work_bound = None
        self._queue: deque[_Pending] = deque()
        self._dead: list[tuple[_Pending, BaseException]] = []  # dropped from the queue, to be failed (_drop_dead)
        self._idle: list[Runner] = list(runners)  # instances not running or forming a batch
        self._cond = threading.Condition()
        self._stopped = False
        # One worker more than instances: while one answers the requests of the batch it ran (submit's), another
        # takes the freed instance.
        self._threads = [threading.Thread(target=self._worker, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(len(runners) + 1)]
        for t in self._threads:
            t.start()

    # -- request side ------------------------------------------------------------------------
    def execute(self, prep: PreparedRequest, call: Call) -> Execution:
        item = _Pending(prep, batch_key(prep), max(prep.batch_size, 1), call)
        runner = self._enqueue(item, lead=True)
        if runner is not None:
            self._form_and_run(runner)
        if not item.done.wait(call.remaining()):
            with self._cond:
                running = item.taken
                if not running:  # still queued: whoever forms the next batch skips it
                    item.abandoned = True
            if running:  # its feeds may be in its scratch buffers (Scheduler's rule): wait for the batch
                item.done.wait()
            raise _expired(self.name)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def submit(self, prep: PreparedRequest, call: Call,
               then: Callable[[Execution | None, BaseException | None], None]) -> None:
        """Queue a request and return at once: ``then(execution, None)`` or ``then(None, error)`` runs on the
        worker that ran its batch, or on the thread that dropped it (its call ended: ``call.on_end``, which
        such a caller must give, as the core loop's calls do; its deadline passed as a batch formed; the
        model was unloaded). The caller's thread never waits for other requests: it leads a batch on an idle
        batcher only when the batch runs at once (eager batching, or no delay), so all it waits on is the
        model's run. Raises as ``execute`` does when the request cannot be queued."""
        item = _Pending(prep, batch_key(prep), max(prep.batch_size, 1), call, then=then)
        runner = self._enqueue(item, lead=self.eager or not self.max_delay_ns)
        if runner is not None:
            self._form_and_run(runner)

    def _enqueue(self, item: _Pending, lead: bool) -> Runner | None:
        """Queue ``item``; the runner its own thread leads a batch with (``lead``, and the batcher was idle),
        else None. UNAVAILABLE when the model is being unloaded, RESOURCE_EXHAUSTED when the queue is full."""
        runner = None
        with self._cond:
            if self._stopped:
                raise Unavailable(f"model '{self.name}' is being unloaded")
            if len(self._queue) >= self.max_queue_size:
                raise ResourceExhausted(
                    f"model '{self.name}': queue is full ({self.max_queue_size} requests waiting); retry later"
                )
            self._queue.append(item)
            if lead and len(self._queue) == 1 and self._idle:
                runner = self._idle.pop()  # idle batcher: this thread leads the batch
            else:
                self._cond.notify_all()
        call = item.call
        if call.on_end is not None and not call.on_end(lambda: self._caller_left(item)):
            self._caller_left(item)  # the call had already ended
        return runner

    def _caller_left(self, item: _Pending) -> None:
        """The call ended (cancelled or timed out; or answered, then this does nothing): a request still
        queued leaves the queue now and frees its caller's thread, instead of when the next batch forms."""
        with self._cond:
            if item.taken or item.done.is_set():
                return
            try:
                self._queue.remove(item)
            except ValueError:
                return
            self._cond.notify_all()  # a thread forming a batch around it looks again
        item.finish(error=Cancelled(f"the call ended while its request waited in model '{self.name}''s queue; "
                                    "nothing was computed"))

    # -- batch side --------------------------------------------------------------------------
    def _drop_dead(self) -> None:
        """Move expired, timed-out and cancelled requests from the queue to ``_dead`` (called under the lock;
        ``_answer_dead`` answers them once it is released)."""
        now = time.monotonic()
        keep: deque[_Pending] = deque()
        for it in self._queue:
            if it.abandoned or (it.call.is_active is not None and not it.call.is_active()):
                self._dead.append((it, DeadlineExceeded("request cancelled or timed out while queued")))
            elif it.call.deadline is not None and now >= it.call.deadline:
                self._dead.append((it, _expired(self.name)))
            else:
                keep.append(it)
        self._queue = keep

    def _answer_dead(self) -> None:
        """Fail what ``_drop_dead`` took out of the queue, outside the lock (a ``submit`` request's answer runs)."""
        with self._cond:
            dead, self._dead = self._dead, []
        for it, error in dead:
            it.finish(error=error)

    def _form_batch(self) -> list[_Pending]:
        """With an instance in hand: the next batch from the queue head (empty if nothing is left).
        Called with the lock held; waits on it for the batch delay."""
        while True:
            if self._stopped:
                return []
            self._drop_dead()
            if not self._queue:
                return []
            first = self._queue[0]
            chosen, rows, full = [], 0, False
            for it in self._queue:
                if it.key != first.key:
                    continue
                if rows + it.rows > self.max_batch_size:
                    full = True
                    break
                chosen.append(it)
                rows += it.rows
            waited = time.perf_counter_ns() - first.enqueued_ns
            if (full or self.eager or rows >= self.max_batch_size or rows in self.preferred
                    or waited >= self.max_delay_ns):
                for it in chosen:
                    it.taken = True
                taken = set(map(id, chosen))
                self._queue = deque(it for it in self._queue if id(it) not in taken)
                return chosen
            self._cond.wait((self.max_delay_ns - waited) / 1e9)

    def _form_and_run(self, runner: Runner) -> None:
        """Form one batch with ``runner`` held, run it, give the runner back, then answer the batch's requests
        (after: a request answered from here, ``submit``'s, is packaged and sent on this thread, and the
        instance need not wait for that; another worker takes it meanwhile)."""
        _precise_timers()
        results: list[tuple[_Pending, Execution | None, BaseException | None]] = []
        try:
            with self._cond:
                batch = self._form_batch()
            self._answer_dead()
            if batch:
                results = self._run_safely(runner, batch)
        finally:
            with self._cond:
                self._idle.append(runner)
                self._cond.notify_all()
        for item, execution, error in results:
            item.finish(execution, error)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not (self._queue and self._idle):
                    self._cond.wait()
                if self._stopped:
                    return
                runner = self._idle.pop()
            self._form_and_run(runner)

    def _run_safely(self, runner: Runner, batch: list[_Pending]
                    ) -> list[tuple[_Pending, Execution | None, BaseException | None]]:
        """Each request of the batch with its share of the outputs, or with the error the batch failed with
        (a batch never takes its thread down)."""
        try:
            return self._run(runner, batch)
        except BaseException as exc:
            log.exception("batch of model '%s' failed", self.name)
            err = exc if isinstance(exc, RequestError) else Internal(f"{type(exc).__name__}: {exc}")
            return [(it, None, err) for it in batch]

    def _run(self, runner: Runner, batch: list[_Pending]) -> list[tuple[_Pending, Execution, None]]:
        start = time.perf_counter_ns()
        names = batch[0].prep.output_names
        if len(batch) == 1:
            feeds = batch[0].prep.feeds
        else:
            feeds = {n: np.concatenate([it.prep.feeds[n] for it in batch], axis=0) for n in batch[0].prep.feeds}
        t_in = time.perf_counter_ns()
        outputs = runner(feeds, names)
        t_run = time.perf_counter_ns()
        total = sum(it.rows for it in batch)
        offset, results = 0, []
        for it in batch:
            part = [o[offset:offset + it.rows] for o in outputs] if len(batch) > 1 else list(outputs)
            offset += it.rows
            results.append((it, Execution(part, total, queue_ns=start - it.enqueued_ns, input_ns=t_in - start,
                                          infer_ns=t_run - t_in), None))
        self.stats.record_execution(total, RequestTimes(compute_input_ns=t_in - start, compute_infer_ns=t_run - t_in))
        return results

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            pending, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for it in pending:
            it.finish(error=Unavailable(f"model '{self.name}' was unloaded while the request waited"))


def make_scheduler(spec: ModelSpec, runners: list[Runner], stats: ModelStatistics,
                   settings: ServerSettings) -> DirectScheduler | DynamicBatcher:
    """A dynamic batcher when the config asks for one and the model batches; else the direct scheduler."""
    cfg = spec.config
    if cfg.WhichOneof("scheduling_choice") == "dynamic_batching" and spec.max_batch_size > 0:
        db = cfg.dynamic_batching
        return DynamicBatcher(
            spec.name, runners, stats, spec.max_batch_size, list(db.preferred_batch_size),
            db.max_queue_delay_microseconds,
            db.default_queue_policy.max_queue_size or settings.max_queue_size,
            eager=cfg.optimization.eager_batching,
        )
    return DirectScheduler(spec.name, runners, stats)
