"""What one request may cost the server beyond its own bytes, checked before the cost is paid.

The bounds come from the server's flags (:class:`RequestLimits`; docs/resilience.md, "Memory per
request"). Typed contents are bounded by their decoded size before they are decoded (a one-byte varint
decodes to up to 8 bytes); BYTES inputs by their element count before a single element is split out; answers
by the largest message the transport will send (:class:`ResponseBound`), before the run where the outputs'
dims are static and on the arrays after it where they are not, so that an answer that could not be sent is
refused instead of encoded. Config-time bounds (instances, threads, batch sizes) live in ``limits.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from tensorwire.errors import TooLarge
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES, Datatype

if TYPE_CHECKING:
    from tensorwire.server.model_config import ModelSpec
    from tensorwire.server.settings import ServerSettings
    from tensorwire.server.validation import PreparedRequest


@dataclass(frozen=True)
class RequestLimits:
    """What one request may make the server hold beyond its own bytes; the defaults are ServerSettings'.

    BYTES elements are bounded by count because each becomes Python objects and ONNX Runtime strings
    (~300 bytes per element through an Identity model whatever its length; bench/results/memory/); typed
    contents by their decoded size; responses (and the shared-memory inputs of one request, which stand for
    bytes that would otherwise have come in it) by the largest message the server sends.
    """

    max_bytes_elements: int = 1 << 16
    max_typed_contents_bytes: int = 16 << 20
    max_response_bytes: int = 64 << 20

    @classmethod
    def of(cls, settings: ServerSettings) -> RequestLimits:
        """The limits a server's ``ServerSettings`` set."""
        return cls(settings.max_bytes_elements, int(settings.max_typed_contents_mb * 2**20),
                   settings.max_message_bytes)


DEFAULT_LIMITS = RequestLimits()


def check_bytes_elements(count: int, where: str, limits: RequestLimits) -> None:
    """RESOURCE_EXHAUSTED for more BYTES elements than the server takes, before any is split or decoded."""
    if count > limits.max_bytes_elements:
        raise TooLarge(
            f"{where}: {count} BYTES elements, above this server's bound of {limits.max_bytes_elements} "
            "(--max-bytes-elements); send fewer strings per request")


def typed_contents_size(dt: Datatype, count: int) -> int:
    """Bytes that ``count`` typed-contents elements of ``dt`` decode to."""
    return count * CONTENTS_FIELD_DTYPES[dt.contents_field].itemsize


def check_typed_contents_total(where: str, dt: Datatype, count: int, size: int, total: int,
                               limits: RequestLimits) -> None:
    """RESOURCE_EXHAUSTED once a request's decoded typed contents (``total`` so far, this input's ``size``
    included) pass the bound."""
    if total > limits.max_typed_contents_bytes:
        raise TooLarge(
            f"{where}: {dt.contents_field} of {count} elements decodes to {size} bytes, {total} for the "
            f"request's typed contents so far, above this server's bound of {limits.max_typed_contents_bytes} "
            "(--max-typed-contents-mb); send it in raw_input_contents")


def check_shared_memory_budget(where: str, byte_size: int, budget: list[int], limits: RequestLimits) -> None:
    """Take ``byte_size`` from what a request's shared-memory inputs may still make the server hold (``budget``,
    a one-item list the request carries): they stand for bytes that would otherwise have come in it."""
    if byte_size > budget[0]:
        raise TooLarge(
            f"{where}: {byte_size} bytes from shared memory would take this request past this server's bound "
            f"of {limits.max_response_bytes} bytes per request (--max-message-mb)")
    budget[0] -= byte_size


class OutputSize(NamedTuple):
    """The least wire size of one output: ``elements`` per batch row (or of the whole tensor when the model
    does not batch; None when a dim is dynamic or the datatype is BYTES), bytes per element in raw form and
    in typed form (a varint is at least one byte, so these are lower bounds and a refusal is always right)."""

    elements: int | None
    raw_itemsize: int
    typed_itemsize: int


@dataclass(frozen=True)
class ResponseBound:
    """The smallest size each output can have on the wire, to refuse an answer that could not be sent."""

    sizes: dict[str, OutputSize]
    before: bool  # some request could exceed the bound with static outputs alone: check before running
    after: bool  # some output is dynamic: check the arrays after the run
    limit: int

    @classmethod
    def of(cls, spec: ModelSpec, limits: RequestLimits) -> ResponseBound:
        sizes = {}
        for t in spec.outputs:
            dt = t.datatype
            static = all(d >= 0 for d in t.dims) and dt.name != "BYTES" and dt.itemsize
            typed = dt.itemsize if dt.contents_field in ("fp32_contents", "fp64_contents") else 1
            sizes[t.name] = OutputSize(math.prod(t.dims) if static else None, dt.itemsize or 1, typed)
        most = sum(s.elements * s.raw_itemsize for s in sizes.values() if s.elements is not None)
        after = any(s.elements is None for s in sizes.values())
        return cls(sizes, most * max(spec.max_batch_size, 1) > limits.max_response_bytes, after,
                   limits.max_response_bytes)

    def check(self, prep: PreparedRequest, arrays: list | None = None) -> None:
        """Before the run (``arrays`` None): the static outputs' size; after it: every array's."""
        total, parts = 0, []
        for i, name in enumerate(prep.output_names):
            if prep.shm is not None and name in prep.shm.targets:
                continue  # written into the client's region, not into the response
            size = self._size(name, prep, None if arrays is None else arrays[i])
            if size is None:
                continue
            total += size
            parts.append(f"'{name}' {size}")
        if total > self.limit:
            raise TooLarge(
                f"the response would hold at least {total} bytes ({', '.join(parts)}), above this server's largest "
                f"message of {self.limit} bytes (--max-message-mb); ask for fewer outputs or a smaller batch")

    def _size(self, name: str, prep: PreparedRequest, arr) -> int | None:
        out = self.sizes[name]
        per = out.raw_itemsize if prep.raw_output else out.typed_itemsize
        if arr is not None:
            if arr.dtype == object:  # BYTES: a length prefix (raw) or tag and length (typed) each
                return arr.size * (4 if prep.raw_output else 2) + sum(map(len, arr.flat))
            return arr.size * per
        if out.elements is None:
            return None
        return out.elements * max(prep.batch_size, 1) * per
