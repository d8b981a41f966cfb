"""Check a decoded request against the model's spec and turn it into ONNX Runtime feeds.

Everything a client can get wrong is caught here, before ONNX Runtime runs, and answered with
INVALID_ARGUMENT and a message that names the tensor, what came and what was expected.

What a request may cost is bounded here too (:class:`RequestLimits`, docs/resilience.md "Memory per
request"): :func:`contents_check` runs inside the codec, before typed contents are decoded; the BYTES
element bound before raw BYTES are split; :class:`ResponseBound` before the run (static output dims)
and after it (dynamic ones), so an answer that could not be sent is refused instead of encoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tensorwire.errors import InvalidArgument, ResourceExhausted
from tensorwire.proto.datatypes import CONTENTS_FIELD_DTYPES
from tensorwire.proto.messages import InferRequest, InputTensor
from tensorwire.proto.tensors import (
    array_from_contents,
    array_from_raw,
    check_contents_counts,
    datatype,
    element_count,
    format_shape,
)
from tensorwire.server.model_config import ModelSpec, TensorSpec
from tensorwire.server.scratch import aligned_copy
from tensorwire.server.settings import ServerSettings
from tensorwire.server.shared_memory import SharedMemoryRegistry, ShmOutputs, ShmRef, checked, read_input, shm_ref

# Request/output parameter that asks for typed InferTensorContents instead of raw bytes
# (the same name Triton's HTTP protocol uses for its binary tensor extension).
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"


@dataclass(frozen=True)
class RequestLimits:
    """What one request may make the server hold beyond its own bytes; the defaults are ServerSettings'.

    BYTES elements are bounded by count because each becomes Python objects and ONNX Runtime strings
    (~300 bytes per element through an Identity model whatever its length; bench/results/memory/); typed
    contents by their decoded size, since a one-byte varint decodes to up to 8 bytes; responses by the
    largest message grpcio will send.
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
        raise ResourceExhausted(
            f"{where}: {count} BYTES elements, above this server's bound of {limits.max_bytes_elements} "
            "(--max-bytes-elements); send fewer strings per request")


ContentsCheck = Callable[[list[tuple[InputTensor, dict[str, int]]]], None]


def contents_check(spec: ModelSpec, limits: RequestLimits) -> ContentsCheck:
    """The check a codec runs once per request on its inputs' typed-contents counts, before decoding them:
    each input must be one of the model's, given once, with its datatype and a shape it accepts, the counts
    must fill that shape, BYTES within the element bound, and the request's decoded typed contents, all
    inputs together, within the size bound. The same messages as :func:`prepare` gives."""

    def check(counted: list[tuple[InputTensor, dict[str, int]]]) -> None:
        seen: dict = {}
        decoded = 0
        for inp, counts in counted:
            t = _declared_input(spec, inp, seen)
            seen[inp.name] = None
            where = f"input '{inp.name}'"
            dt = t.datatype
            count = check_contents_counts(counts, dt, inp.shape, where)
            if dt.name == "BYTES":
                check_bytes_elements(count, where, limits)
                continue
            size = count * CONTENTS_FIELD_DTYPES[dt.contents_field].itemsize
            decoded += size
            if decoded > limits.max_typed_contents_bytes:
                raise ResourceExhausted(
                    f"{where}: {dt.contents_field} of {count} elements decodes to {size} bytes, {decoded} for the "
                    f"request's typed contents so far, above this server's bound of "
                    f"{limits.max_typed_contents_bytes} (--max-typed-contents-mb); send it in raw_input_contents")

    return check


@dataclass(frozen=True)
class ResponseBound:
    """The smallest size each output can have on the wire, to refuse an answer grpcio could not send.

    ``rows``: per output, (elements per batch row, or of the whole tensor without batching; None when a
    dim is dynamic or the datatype is BYTES) and bytes per element in raw and in typed form. A typed
    varint is at least one byte, so the figures are lower bounds: a refusal is always right.
    """

    rows: dict[str, tuple[int | None, int, int]]
    before: bool  # some request could exceed the bound with static outputs alone: check before running
    after: bool  # some output is dynamic: check the arrays after the run
    limit: int

    @classmethod
    def of(cls, spec: ModelSpec, limits: RequestLimits) -> ResponseBound:
        rows = {}
        for t in spec.outputs:
            dt = t.datatype
            static = all(d >= 0 for d in t.dims) and dt.name != "BYTES" and dt.itemsize
            typed = dt.itemsize if dt.contents_field in ("fp32_contents", "fp64_contents") else 1
            rows[t.name] = (math.prod(t.dims) if static else None, dt.itemsize or 1, typed)
        most = sum(n * raw for n, raw, _ in rows.values() if n is not None) * max(spec.max_batch_size, 1)
        after = any(n is None for n, _, _ in rows.values())
        return cls(rows, most > limits.max_response_bytes, after, limits.max_response_bytes)

    def check(self, prep: PreparedRequest, arrays: list | None = None) -> None:
        """Before the run (``arrays`` None): the static outputs' size; after it: every array's."""
        total, parts = 0, []
        for i, name in enumerate(prep.output_names):
            if prep.shm is not None and name in prep.shm.targets:
                continue  # written into the client's region, not into the response
            n, raw, typed = self.rows[name]
            per = raw if prep.raw_output else typed
            if arrays is not None:
                arr = arrays[i]
                if arr.dtype == object:  # BYTES: a length prefix (raw) or tag and length (typed) each
                    size = arr.size * (4 if prep.raw_output else 2) + sum(map(len, arr.flat))
                else:
                    size = arr.size * per
            elif n is None:
                continue
            else:
                size = n * max(prep.batch_size, 1) * per
            total += size
            parts.append(f"'{name}' {size}")
        if total > self.limit:
            raise ResourceExhausted(
                f"the response would hold at least {total} bytes ({', '.join(parts)}), above this server's largest "
                f"message of {self.limit} bytes (--max-message-mb); ask for fewer outputs or a smaller batch")


@dataclass
class PreparedRequest:
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    batch_size: int  # 0 for models that do not batch
    raw_output: bool
    misaligned: int  # inputs copied because their view was not aligned to their dtype's size
    shm: ShmOutputs | None = None  # outputs written into shared-memory regions (leased until the answer)


@dataclass(frozen=True)
class FastLane:
    """A model's expectations, precomputed once, for :func:`prepare_fast`."""

    inputs: dict[str, tuple[str, np.dtype, int, tuple[int, ...]]]  # name -> (datatype, dtype, itemsize, shape)
    outputs: tuple[str, ...]  # every output, in model order (the default when none are requested)
    max_batch_size: int
    untyped_outputs: frozenset[str] = frozenset()  # outputs with no typed-contents field (raw only)

    @classmethod
    def of(cls, spec: ModelSpec) -> FastLane:
        """Only inputs the lane can take whole: numeric datatypes with a numpy dtype (not BYTES, not BOOL,
        whose bytes must be checked); a model with any other input gets an empty lane (all general)."""
        inputs = {}
        for t in spec.inputs:
            dt = t.datatype
            if dt.name in ("BYTES", "BOOL") or dt.numpy is None or t.optional:
                return cls({}, (), spec.max_batch_size)
            inputs[t.name] = (dt.name, dt.numpy, dt.itemsize, spec.full_shape(t))
        return cls(inputs, tuple(t.name for t in spec.outputs), spec.max_batch_size,
                   frozenset(t.name for t in spec.outputs if t.datatype.contents_field is None))


def prepare_fast(request: InferRequest, lane: FastLane) -> PreparedRequest | None:
    """The common request, prepared in a few microseconds: every input given once in raw form, with
    the model's datatype and a shape it accepts, outputs requested without parameters.

    Returns None for anything else (an error included); :func:`prepare` then handles it and raises
    the precise message. So this lane may only accept what ``prepare`` accepts, and must produce
    what ``prepare`` produces (tests/test_validation.py holds the two to that).
    """
    raws = request.raw_input_contents
    inputs = request.inputs
    n = len(inputs)
    if n == 0 or n != len(raws) or n != len(lane.inputs):  # an empty lane takes nothing
        return None
    # Outputs first: they are cheap to check, and a request that leaves the lane over them must not have
    # paid for its inputs' views and copies twice.
    raw_output = request.parameters.get(BINARY_DATA_OUTPUT, True) is not False
    if request.outputs:
        names = []
        for out in request.outputs:
            if out.parameters or out.name not in lane.outputs or out.name in names:
                return None
            names.append(out.name)
    else:
        names = list(lane.outputs)
    if not raw_output and lane.untyped_outputs.intersection(names):
        return None
    mbs = lane.max_batch_size
    feeds: dict[str, np.ndarray] = {}
    batch = 0
    misaligned = 0
    for i in range(n):
        inp = inputs[i]
        want = lane.inputs.get(inp.name)
        if want is None or inp.contents or inp.parameters:  # parameters: maybe shared memory
            return None
        name, dtype, itemsize, expected = want
        shape = inp.shape
        if inp.datatype != name or len(shape) != len(expected):
            return None
        for got, dim in zip(shape, expected):
            if got < 0 or (got != dim and dim != -1):
                return None
        if mbs > 0:
            rows = shape[0]
            if rows < 1 or rows > mbs or (batch and rows != batch):
                return None
            batch = rows
        raw = raws[i]
        count = math.prod(shape)
        if memoryview(raw).nbytes != count * itemsize:
            return None
        arr = np.frombuffer(raw, dtype, count).reshape(shape)
        if not arr.flags.aligned:
            arr = aligned_copy(arr, i)
            misaligned += 1
        feeds[inp.name] = arr
    if len(feeds) != n:  # a name given twice
        return None
    return PreparedRequest(feeds, names, batch, raw_output, misaligned)


def _describe_inputs(spec: ModelSpec) -> str:
    return ", ".join(f"{t.name} ({t.datatype.name} {format_shape(spec.full_shape(t))})" for t in spec.inputs)


def _check_shape(spec: ModelSpec, t: TensorSpec, shape: tuple[int, ...]) -> None:
    expected = spec.full_shape(t)
    name = f"input '{t.name}'"
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: shape {format_shape(shape)} has a negative dimension")
    if len(shape) != len(expected):
        raise InvalidArgument(
            f"{name}: shape {format_shape(shape)} has rank {len(shape)} but the model expects rank "
            f"{len(expected)} {format_shape(expected)}"
        )
    for i, (got, want) in enumerate(zip(shape, expected)):
        if want != -1 and got != want:
            raise InvalidArgument(
                f"{name}: dimension {i} is {got} but the model expects {want} "
                f"(shape {format_shape(shape)}, expected {format_shape(expected)})"
            )
    if spec.max_batch_size > 0:
        if shape[0] > spec.max_batch_size:
            raise InvalidArgument(
                f"{name}: batch size {shape[0]} exceeds the model's max_batch_size {spec.max_batch_size}"
            )
        if shape[0] < 1:
            raise InvalidArgument(f"{name}: batch size must be at least 1, got {shape[0]}")


def _bytes_as_text(arr: np.ndarray, name: str) -> np.ndarray:
    """ONNX Runtime string tensors hold text: BYTES elements must be UTF-8 (it would str() raw bytes)."""
    out = np.empty(arr.shape, dtype=object)
    flat, dst = arr.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat):
        try:
            dst[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"input '{name}': BYTES element {i} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "ONNX string tensors carry text"
            ) from None
    return out


def prepare(request: InferRequest, spec: ModelSpec, limits: RequestLimits = DEFAULT_LIMITS,
            regions: SharedMemoryRegistry | None = None) -> PreparedRequest:
    """Validate ``request`` against ``spec``; return ORT feeds (views of the request where possible).

    Inputs that name a shared-memory region (``regions``) are read from it; raw_input_contents then hold
    one entry per other input, in input order (Triton's rule). Outputs that name a region get it leased
    in the result's ``shm``; a failure here releases what was leased.
    """
    shm_in = {i: ref for i, inp in enumerate(request.inputs)
              if inp.parameters and (ref := shm_ref(inp.parameters, inp.name)) is not None}
    n_raw = len(request.raw_input_contents)
    n_plain = len(request.inputs) - len(shm_in)
    if n_raw and n_raw != n_plain:
        raise InvalidArgument(
            f"raw_input_contents has {n_raw} entries but the request has {n_plain} inputs not in shared memory; "
            "send one entry per such input, in input order"
        )
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    misaligned = 0
    budget = [limits.max_response_bytes]  # what shared-memory inputs may make this request hold
    raw_index = 0  # raw_input_contents skips the inputs in shared memory
    for i, inp in enumerate(request.inputs):
        t = _declared_input(spec, inp, feeds)
        if spec.max_batch_size > 0:
            if batch is not None and inp.shape[0] != batch:
                raise InvalidArgument(
                    f"input '{inp.name}': batch size {inp.shape[0]} differs from the other inputs' {batch}"
                )
            batch = inp.shape[0]
        if i in shm_in:
            arr = _shm_input_array(request, i, shm_in[i], t.datatype, limits, budget, regions)
        else:
            arr = _input_array(request, i, raw_index, t.datatype, limits)
            raw_index += 1
        if t.datatype.name == "BYTES":
            arr = _bytes_as_text(arr, inp.name)
        elif not arr.flags.aligned:
            # Raw views start wherever the field sits in the message; ONNX Runtime takes a slow path on
            # them and a copy is cheaper (bench/results/README.md, section 4, `tensorwire bench alignment`).
            # So copy, into this handler thread's reused scratch buffer.
            arr = aligned_copy(arr, i)
            misaligned += 1
        feeds[inp.name] = arr
    missing = [t.name for t in spec.inputs if t.name not in feeds and not t.optional]
    if missing:
        raise InvalidArgument(
            f"missing input(s) {', '.join(missing)} for model '{spec.name}'; expected inputs: "
            f"{_describe_inputs(spec)}"
        )
    names, raw_output = _requested_outputs(request, spec)
    shm = _shm_outputs(request, spec, batch or 0, regions)
    return PreparedRequest(feeds, names, batch or 0, raw_output, misaligned, shm)


def _shm_input_array(request: InferRequest, i: int, ref: ShmRef, dt, limits: RequestLimits, budget: list[int],
                     regions: SharedMemoryRegistry | None) -> np.ndarray:
    """Input ``i``'s data read from its shared-memory region, held to the same checks as raw bytes; sizes
    are checked before a byte is read, and all of a request's shared-memory inputs together are bounded by
    the largest message (they stand for bytes that would otherwise have come in it)."""
    inp = request.inputs[i]
    where = f"input '{inp.name}'"
    regions = checked(regions)
    if inp.contents:
        raise InvalidArgument(f"unexpected 'content' provided when using shared memory for input tensor "
                              f"'{inp.name}' for model '{request.model_name}'")
    count = element_count(inp.shape)
    if dt.name == "BYTES":
        check_bytes_elements(count, where, limits)
    elif ref.byte_size != count * dt.itemsize:
        raise InvalidArgument(
            f"{where}: shared_memory_byte_size is {ref.byte_size}, but shape {format_shape(inp.shape)} of {dt.name} "
            f"needs {count * dt.itemsize} bytes ({count} elements x {dt.itemsize} bytes)")
    if ref.byte_size > budget[0]:
        raise ResourceExhausted(
            f"{where}: {ref.byte_size} bytes from shared memory would take this request past this server's bound "
            f"of {limits.max_response_bytes} bytes per request (--max-message-mb)")
    budget[0] -= ref.byte_size
    return array_from_raw(read_input(regions, ref, i), dt, inp.shape, where)


def _shm_outputs(request: InferRequest, spec: ModelSpec, batch: int,
                 regions: SharedMemoryRegistry | None) -> ShmOutputs | None:
    """The requested outputs to write into shared memory, leased; an output whose dims are all static is
    checked against its region's size now, before the model runs."""
    shm = None
    try:
        for out in request.outputs:
            ref = shm_ref(out.parameters, out.name) if out.parameters else None
            if ref is None:
                continue
            if shm is None:
                shm = ShmOutputs()
            shm.add(checked(regions), out.name, ref)
            t = spec.output_by_name[out.name]
            if all(d >= 0 for d in t.dims) and t.datatype.name != "BYTES" and t.datatype.itemsize:
                rows = max(batch, 1) if spec.max_batch_size > 0 else 1
                shm.check_size(out.name, math.prod(t.dims) * rows * t.datatype.itemsize)
    except BaseException:
        if shm is not None:
            shm.release()
        raise
    return shm


def _declared_input(spec: ModelSpec, inp, seen: dict) -> TensorSpec:
    """The model's input that ``inp`` names, checked for name, repetition, datatype and shape."""
    t = spec.input_by_name.get(inp.name)
    if t is None:
        raise InvalidArgument(
            f"unknown input '{inp.name}' for model '{spec.name}'; expected inputs: {_describe_inputs(spec)}"
        )
    if inp.name in seen:
        raise InvalidArgument(f"input '{inp.name}' is given more than once")
    dt = datatype(inp.datatype, f"input '{inp.name}'")
    if dt.name != t.datatype.name:
        raise InvalidArgument(
            f"input '{inp.name}': datatype {dt.name} does not match the model, which expects {t.datatype.name}"
        )
    _check_shape(spec, t, inp.shape)
    return t


def _input_array(request: InferRequest, i: int, raw_index: int, dt, limits: RequestLimits) -> np.ndarray:
    """Input ``i``'s data as an array of its shape: a view of its raw bytes (entry ``raw_index``: inputs in
    shared memory have none), or its typed contents."""
    inp = request.inputs[i]
    where = f"input '{inp.name}'"
    if dt.name == "BYTES":  # before a single element is split out of the raw bytes
        check_bytes_elements(element_count(inp.shape), where, limits)
    if request.raw_input_contents:
        if inp.contents:
            raise InvalidArgument(
                f"{where}: has typed contents while the request also uses raw_input_contents; "
                "use one or the other for all inputs"
            )
        return array_from_raw(request.raw_input_contents[raw_index], dt, inp.shape, where)
    if not inp.contents and element_count(inp.shape) > 0:
        raise InvalidArgument(
            f"{where}: no data; send it in contents.{dt.contents_field or 'raw'} or raw_input_contents")
    return array_from_contents(inp.contents, dt, inp.shape, where)


def _requested_outputs(request: InferRequest, spec: ModelSpec) -> tuple[list[str], bool]:
    """(output names to compute, whether to answer in raw form)."""
    raw_output = request.parameters.get(BINARY_DATA_OUTPUT, True) is not False
    if not request.outputs:
        names = [t.name for t in spec.outputs]
    else:
        names = []
        for out in request.outputs:
            if out.name not in spec.output_by_name:
                known = ", ".join(spec.output_by_name)
                raise InvalidArgument(f"unknown output '{out.name}' for model '{spec.name}'; outputs: {known}")
            if out.name in names:
                raise InvalidArgument(f"output '{out.name}' is requested more than once")
            names.append(out.name)
            if out.parameters.get(BINARY_DATA, True) is False:
                raw_output = False
    if not raw_output:
        untyped = [n for n in names if spec.output_by_name[n].datatype.contents_field is None]
        if untyped:
            dt = spec.output_by_name[untyped[0]].datatype.name
            raise InvalidArgument(
                f"output '{untyped[0]}' is {dt}, which the protocol cannot carry as typed contents; ask for it "
                f"as raw output (leave out {BINARY_DATA_OUTPUT}=false / binary_data=false, or request only "
                "other outputs)"
            )
    return names, raw_output
