"""CUDA / TensorRT serving: runs only where onnxruntime-gpu sees a GPU (the lent device machine)."""

from __future__ import annotations

import glob

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
# onnxruntime-gpu lists CUDAExecutionProvider whether or not a device is there: ask for both.
HAS_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_DEVICE = bool(glob.glob("/dev/nvidia[0-9]*"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (HAS_PROVIDER and HAS_DEVICE), reason=(
        "needs onnxruntime-gpu and a CUDA device; this machine has "
        f"{'the provider' if HAS_PROVIDER else 'no CUDAExecutionProvider'} and "
        f"{'a device' if HAS_DEVICE else 'no /dev/nvidia* device'}")),
]


def test_served_on_cuda_matches_cpu(tmp_path):
    import tritonclient.grpc as grpcclient
    from models import ADD_SUB_CONFIG, add_sub_model, write_model
    from serving import start_server

    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG.replace("KIND_CPU", "KIND_GPU"))
    with start_server(repo, "--providers", "cuda,cpu") as s:
        c = grpcclient.InferenceServerClient(s.address)
        cfg = c.get_model_config("add_sub", as_json=True)["config"]
        assert cfg["parameters"]["execution_providers"]["string_value"].startswith("CUDAExecutionProvider")
        a = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        ins = [grpcclient.InferInput(n, [4, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for t in ins:
            t.set_data_from_numpy(a)
        np.testing.assert_allclose(c.infer("add_sub", ins).as_numpy("OUTPUT0"), 2 * a, rtol=1e-6)
