"""CPU per request of the server's own request path without gRPC: InferenceServicer.model_infer (decode,
Model.infer, encode) called from 1 and from 8 threads, beside ORT's session.run alone.
Usage: python in_process.py REPOSITORY (a repository holding the `mlp` model of bench cpu)."""

import sys
import threading
import time
from pathlib import Path

import numpy as np

from tensorwire.client import encode_request
from tensorwire.fastpath import load_codec
from tensorwire.server.grpc_service import InferenceServicer
from tensorwire.server.repository import ModelRepository
from tensorwire.server.settings import ServerSettings


class Context:
    """What model_infer asks of grpcio's ServicerContext: no deadline, always active."""

    def time_remaining(self):
        return None

    def is_active(self):
        return True

    def add_callback(self, cb):
        return True


def repeat(fn, n: int) -> None:
    for _ in range(n):
        fn()


def main() -> None:
    repo = ModelRepository(ServerSettings(model_repository=Path(sys.argv[1]), intra_op_threads=1))
    repo.load_all()
    servicer = InferenceServicer(repo, load_codec("ext"))
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    request = encode_request("mlp", {"input": x})
    session = repo.get("mlp", "").sessions[0]
    calls = {"ort": lambda: session.run(None, {"input": x}),
             "model_infer": lambda: servicer.model_infer(request, Context())}
    for name, fn in calls.items():
        for n_threads in (1, 8):
            for _ in range(200):
                fn()
            n = 2000
            c0, t0 = time.process_time(), time.perf_counter()
            threads = [threading.Thread(target=repeat, args=(fn, n // n_threads)) for _ in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            print(f"{name} threads={n_threads}: CPU {cpu / n * 1e6:.0f} us/request, "
                  f"wall {wall / n * 1e6:.0f} us/request")
    repo.close()


if __name__ == "__main__":
    main()
