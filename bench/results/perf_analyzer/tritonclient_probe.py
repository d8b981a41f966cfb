"""The conv model through tritonclient (Python), plain gRPC vs system shared memory, sequential calls.

    python bench/results/perf_analyzer/tritonclient_probe.py 8     # or 1: the batch size

3 alternating rounds, the p50 of each (40 calls at -b 8, 200 at -b 1). Figures: README.md here.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from tensorwire.bench.triton_perf import build_repository
from tensorwire.launcher import launch


def main(batch: int) -> None:
    repo = build_repository(Path(tempfile.mkdtemp()) / "models")
    args = ["-m", "tensorwire", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
            "--grpc-port", "0", "--http-port", "0", "--allow-shared-memory"]
    with launch(args) as server:
        client = grpcclient.InferenceServerClient(server.address)
        meta = client.get_model_metadata("conv", as_json=True)
        in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        x = np.random.default_rng(0).random((batch, 3, 224, 224), np.float32)
        regions = [shm.create_shared_memory_region("pin", "/tw_probe_in", x.nbytes),
                   shm.create_shared_memory_region("pout", "/tw_probe_out", batch * 64)]
        shm.set_shared_memory_region(regions[0], [x])
        client.register_system_shared_memory("pin", "/tw_probe_in", x.nbytes)
        client.register_system_shared_memory("pout", "/tw_probe_out", batch * 64)

        def shared() -> None:
            i = grpcclient.InferInput(in_name, list(x.shape), "FP32")
            i.set_shared_memory("pin", x.nbytes)
            o = grpcclient.InferRequestedOutput(out_name)
            o.set_shared_memory("pout", batch * 64)
            client.infer("conv", [i], outputs=[o])

        def plain() -> None:
            i = grpcclient.InferInput(in_name, list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            client.infer("conv", [i])

        try:
            for _ in range(3):
                for name, call in (("plain", plain), ("shm", shared)):
                    call()
                    latencies = []
                    for _ in range(40 if batch == 8 else 200):
                        start = time.perf_counter()
                        call()
                        latencies.append(time.perf_counter() - start)
                    print(f"-b {batch} {name}: p50 {statistics.median(latencies) * 1e3:.2f} ms")
        finally:
            client.unregister_system_shared_memory()
            for region in regions:
                shm.destroy_shared_memory_region(region)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
