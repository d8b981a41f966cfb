"""Check a decoded request against the model's spec and turn it into ONNX Runtime feeds.

Everything a client can get wrong is caught here, before ONNX Runtime runs, and answered with
INVALID_ARGUMENT and a message that names the tensor, what came and what was expected. Two ways through:
:func:`prepare_fast`, a lane for the common request that takes a few microseconds, and :func:`prepare`, the
general path that handles everything else and words every refusal. The bounds on what a request may cost are
``request_limits.py``'s; the shared-memory side of a request is ``shared_memory.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tensorwire.errors import InvalidArgument
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
from tensorwire.server.request_limits import (
    RequestLimits,
    check_bytes_elements,
    check_typed_contents_total,
    typed_contents_size,
)
from tensorwire.server.scratch import ScratchPool, aligned_copy
from tensorwire.server.shared_memory import SharedMemoryRegistry, ShmOutputs, shm_input_array, shm_outputs, shm_ref

# Request/output parameter that asks for typed InferTensorContents instead of raw bytes
# (the same name Triton's HTTP protocol uses for its binary tensor extension).
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"


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
            size = typed_contents_size(dt, count)
            decoded += size
            check_typed_contents_total(where, dt, count, size, decoded, limits)

    return check


@dataclass
class PreparedRequest:
    """A request checked and turned into ONNX Runtime feeds (views of the request's bytes where possible)."""

    feeds: dict[str, np.ndarray]
    output_names: list[str]
    batch_size: int  # 0 for models that do not batch
    raw_output: bool
    misaligned: int  # inputs copied because their view was not aligned to their dtype's size
    shm: ShmOutputs | None = None  # outputs written into shared-memory regions (leased until the answer)
    # Scratch buffers the feeds live in (server/scratch.py's rule: the request's until its execution is over).
    scratch: list[np.ndarray] = field(default_factory=list)


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


def prepare_fast(request: InferRequest, lane: FastLane, scratch: ScratchPool) -> PreparedRequest | None:
    """The common request, prepared in a few microseconds: every input given once in raw form, with
    the model's datatype and a shape it accepts, outputs requested without parameters.

    Returns None for anything else (an error included); :func:`prepare` then handles it and raises
    the precise message. So this lane may only accept what ``prepare`` accepts, and must produce
    what ``prepare`` produces (tests/server/test_validation.py holds the two to that). Misaligned views are
    copied into ``scratch`` buffers only once the whole request is accepted, so a request that leaves the
    lane has taken none.
    """
    raws = request.raw_input_contents
    inputs = request.inputs
    n = len(inputs)
    if n == 0 or n != len(raws) or n != len(lane.inputs):  # an empty lane takes nothing
        return None
    # Outputs first: they are cheap to check, and a request that leaves the lane over them must not have
    # paid for its inputs' views twice.
    names = _lane_outputs(request, lane)
    if names is None:
        return None
    mbs = lane.max_batch_size
    feeds: dict[str, np.ndarray] = {}
    batch = 0
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
        count = math.prod(shape)
        if memoryview(raws[i]).nbytes != count * itemsize:
            return None
        feeds[inp.name] = np.frombuffer(raws[i], dtype, count).reshape(shape)
    if len(feeds) != n:  # a name given twice
        return None
    raw_output = request.parameters.get(BINARY_DATA_OUTPUT, True) is not False
    prep = PreparedRequest(feeds, names, batch, raw_output, 0)
    for name, arr in feeds.items():
        if not arr.flags.aligned:
            feeds[name] = _realigned(arr, prep, scratch)
    return prep


def _lane_outputs(request: InferRequest, lane: FastLane) -> list[str] | None:
    """The outputs to compute if the lane can take the request's output side, else None."""
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
    return names


def _realigned(arr: np.ndarray, prep: PreparedRequest, scratch: ScratchPool) -> np.ndarray:
    """A misaligned view copied into a scratch buffer the request holds: ONNX Runtime takes a slow path on
    misaligned data and a copy is cheaper (bench/results/decisions/alignment.md)."""
    buf = scratch.take(arr.nbytes)
    prep.scratch.append(buf)
    prep.misaligned += 1
    return aligned_copy(arr, buf)


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


def prepare(request: InferRequest, spec: ModelSpec, limits: RequestLimits, regions: SharedMemoryRegistry,
            scratch: ScratchPool) -> PreparedRequest:
    """Validate ``request`` against ``spec``; return ORT feeds (views of the request where possible).

    Inputs that name a shared-memory region (in ``regions``) are read from it; raw_input_contents then hold
    one entry per other input, in input order (Triton's rule). Outputs that name a region get it leased in
    the result's ``shm``. A failure gives back whatever the request had taken (leases, scratch buffers).
    """
    prep = PreparedRequest({}, [], 0, True, 0)
    try:
        _prepare_inputs(request, spec, limits, regions, scratch, prep)
        prep.output_names, prep.raw_output = _requested_outputs(request, spec)
        prep.shm = shm_outputs(request, spec, prep.batch_size, regions)
    except BaseException:
        scratch.give_back(prep.scratch)
        raise
    return prep


def _prepare_inputs(request: InferRequest, spec: ModelSpec, limits: RequestLimits, regions: SharedMemoryRegistry,
                    scratch: ScratchPool, prep: PreparedRequest) -> None:
    """Every input checked and turned into a feed of ``prep``; its batch size set."""
    shm_in = {i: ref for i, inp in enumerate(request.inputs)
              if inp.parameters and (ref := shm_ref(inp.parameters, inp.name)) is not None}
    n_raw = len(request.raw_input_contents)
    n_plain = len(request.inputs) - len(shm_in)
    if n_raw and n_raw != n_plain:
        raise InvalidArgument(
            f"raw_input_contents has {n_raw} entries but the request has {n_plain} inputs not in shared memory; "
            "send one entry per such input, in input order"
        )
    feeds = prep.feeds
    batch: int | None = None
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
            arr = shm_input_array(request, i, shm_in[i], t.datatype, limits, budget, regions, _taker(prep, scratch))
        else:
            arr = _input_array(request, i, raw_index, t.datatype, limits)
            raw_index += 1
        if t.datatype.name == "BYTES":
            arr = _bytes_as_text(arr, inp.name)
        elif not arr.flags.aligned:
            arr = _realigned(arr, prep, scratch)
        feeds[inp.name] = arr
    missing = [t.name for t in spec.inputs if t.name not in feeds and not t.optional]
    if missing:
        raise InvalidArgument(
            f"missing input(s) {', '.join(missing)} for model '{spec.name}'; expected inputs: "
            f"{_describe_inputs(spec)}"
        )
    prep.batch_size = batch or 0


def _taker(prep: PreparedRequest, scratch: ScratchPool) -> Callable[[int], np.ndarray]:
    """A function that takes a scratch buffer for ``prep`` (which gives it back when its execution is over)."""
    def take(nbytes: int) -> np.ndarray:
        buf = scratch.take(nbytes)
        prep.scratch.append(buf)
        return buf

    return take


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
