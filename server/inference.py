"""The inference path without gRPC: decoded request in, response object out, statistics kept.

Kept apart from the RPC layer so that the same steps serve ModelInfer, ModelStreamInfer and (later)
the dynamic batcher, and so they can be benchmarked in-process.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from tensorwire.errors import DeadlineExceeded, InvalidArgument, TensorwireError
from tensorwire.fastpath.messages import InferRequest, InferResponse, OutputTensor
from tensorwire.server.onnx_model import LoadedModel
from tensorwire.server.repository import ModelRepository
from tensorwire.server.statistics import RequestTimes
from tensorwire.server.validation import prepare

log = logging.getLogger("tensorwire.inference")


def _ort_error(exc: Exception, model: LoadedModel) -> TensorwireError:
    kind = type(exc).__name__
    msg = f"model '{model.spec.name}' version {model.version}: ONNX Runtime rejected the request: {exc}"
    if kind in ("InvalidArgument", "InvalidProtobuf"):
        return InvalidArgument(msg)
    return TensorwireError(msg)


class InferenceEngine:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Validate, run and package one request. ``deadline`` is a time.monotonic() instant."""
        start = time.perf_counter_ns()
        model = self.repository.get(request.model_name, request.model_version)
        times = RequestTimes()
        try:
            prep = prepare(request, model.spec)
            if prep.misaligned:
                model.count_misaligned()
            t1 = time.perf_counter_ns()
            times.compute_input_ns = t1 - start
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"deadline passed before model '{model.spec.name}' ran; nothing was computed"
                )
            try:
                arrays = model.run(prep.feeds, prep.output_names)
            except Exception as exc:  # ORT's pybind exceptions
                raise _ort_error(exc, model) from None
            t2 = time.perf_counter_ns()
            times.compute_infer_ns = t2 - t1
            outputs = []
            for name, arr in zip(prep.output_names, arrays):
                spec = model.spec.output_by_name[name]
                arr = np.asarray(arr)
                outputs.append(OutputTensor(name, spec.datatype.name, tuple(arr.shape), arr))
            response = InferResponse(
                model_name=model.spec.name,
                model_version=model.version,
                id=request.id,
                outputs=outputs,
                raw=prep.raw_output,
            )
            times.compute_output_ns = time.perf_counter_ns() - t2
        except TensorwireError:
            model.stats.record_failure(time.perf_counter_ns() - start)
            raise
        model.stats.record_execution(prep.batch_size, times)
        model.stats.record_success(prep.batch_size, time.perf_counter_ns() - start, times)
        return response
