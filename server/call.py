"""What a model needs to know about the caller of one request, whatever the transport carried it.

A transport builds one ``Call`` per request: ``Call.of_grpc`` for grpcio's servicer context, ``Call.of_core``
for the C-core serving loop (the deadline of its call details and its receive-close result), ``Call.of_http``
for an HTTP request. The model reads only these
facts: when the caller stops waiting (``deadline``), whether it still waits (``is_active``), and a way to be
told the moment it stops (``on_end``), which lets a queued request leave at once when its client goes away;
and the shared-memory token it presented (``shm_token``), when the server requires one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# grpcio reports "no deadline" as a time_remaining() of about 2**63 seconds.
_NO_DEADLINE_S = 1e9


@dataclass(frozen=True, slots=True)
class Call:
    """The caller of one request: ``deadline`` is a time.monotonic() instant (None: no deadline),
    ``is_active`` tells whether the caller still waits (None: always), ``on_end`` (optional) registers a
    function to run when the call ends (cancelled, timed out or answered) and returns False if it already
    ended."""

    deadline: float | None = None
    is_active: Callable[[], bool] | None = None
    on_end: Callable[[Callable[[], None]], bool] | None = None
    # The shared-memory token the caller presented (server/shared_memory.py TOKEN_HEADER), if it was read.
    shm_token: str | None = None
    # Nanoseconds the request waited in its transport for its model's turn (the core loop parks requests past
    # the model's work_bound): the model counts them as queue time, as it counts waiting for an instance.
    waited_ns: int = 0

    @classmethod
    def of_grpc(cls, context, token_header: str | None = None) -> Call:
        """The caller behind a grpcio ``ServicerContext``; ``token_header``: the metadata key to read the
        shared-memory token from (None: not read, it costs a walk of the metadata)."""
        token = None
        if token_header is not None:
            token = next((value for key, value in context.invocation_metadata() if key == token_header), None)
        return cls(deadline_in(context.time_remaining()), context.is_active, context.add_callback, token)

    @classmethod
    def of_core(cls, deadline: float, is_active: Callable[[], bool],
                on_end: Callable[[Callable[[], None]], bool], shm_token: str | None = None,
                waited_ns: int = 0) -> Call:
        """A call of the C-core serving loop: ``deadline`` as grpc core's call details carry it (a time.time()
        instant, about 2**63 without one); ``shm_token`` read from its invocation metadata when required;
        ``waited_ns`` the time its request was parked."""
        return cls(deadline_in(deadline - time.time()), is_active, on_end, shm_token, waited_ns)

    @classmethod
    def of_http(cls, is_active: Callable[[], bool] | None, timeout_s: float | None = None,
                shm_token: str | None = None) -> Call:
        """The caller of an HTTP request: ``is_active`` is False once its connection is gone; ``timeout_s``
        the seconds it waits (None: as long as it takes); ``shm_token`` from its header when required."""
        return cls(deadline_in(timeout_s), is_active, None, shm_token)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def abandoned(self) -> bool:
        """The deadline passed or the caller cancelled: nothing should be computed for it any more."""
        return self.expired() or (self.is_active is not None and not self.is_active())


def deadline_in(seconds: float | None) -> float | None:
    """The monotonic instant ``seconds`` from now; None for no deadline (None, or grpcio's ~2**63 s)."""
    return None if seconds is None or seconds > _NO_DEADLINE_S else time.monotonic() + seconds


ANY_CALLER = Call()
