"""The inference path without gRPC: decoded request in, response object out, statistics kept.

Kept apart from the RPC layer so that the same steps serve ModelInfer, ModelStreamInfer and (later)
the dynamic batcher, and so they can be benchmarked in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from tensorwire.errors import DeadlineExceeded, RequestError
from tensorwire.proto.messages import InferRequest, InferResponse, OutputTensor
from tensorwire.server.repository import ModelRepository
from tensorwire.server.validation import prepare, prepare_fast

log = logging.getLogger("tensorwire.inference")


class InferenceEngine:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def infer(self, request: InferRequest, deadline: float | None = None,
              is_active: Callable[[], bool] | None = None) -> InferResponse:
        """Validate, schedule, run and package one request.

        ``deadline`` is a time.monotonic() instant; ``is_active`` tells whether the client is still
        waiting (a cancelled request is dropped from a batcher queue).
        """
        start = time.perf_counter_ns()
        model = self.repository.get(request.model_name, request.model_version)
        try:
            prep = prepare_fast(request, model.lane) or prepare(request, model.spec)
            validated = time.perf_counter_ns()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"deadline passed before model '{model.spec.name}' ran; nothing was computed"
                )
            execution = model.scheduler.execute(prep, deadline, is_active)
            times = execution.times
            times.compute_input_ns += validated - start
            t2 = time.perf_counter_ns()
            datatypes = model.output_datatypes
            outputs = []
            for name, arr in zip(prep.output_names, execution.outputs):
                arr = np.asarray(arr)
                outputs.append(OutputTensor(name, datatypes[name], arr.shape, arr))
            response = InferResponse(
                model_name=model.spec.name,
                model_version=model.version,
                id=request.id,
                outputs=outputs,
                raw=prep.raw_output,
            )
            times.compute_output_ns = time.perf_counter_ns() - t2
        except RequestError:
            model.stats.record_failure(time.perf_counter_ns() - start)
            raise
        model.stats.record_success(prep.batch_size, time.perf_counter_ns() - start, times)
        return response
