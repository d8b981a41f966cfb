"""Check a served export against PyTorch: ask a KServe v2 server over gRPC (tritonclient), compare.

Used by the export tests; handy for users who want the same evidence for their own model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_WIRE = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64", np.dtype("float16"): "FP16",
         np.dtype("int32"): "INT32", np.dtype("bool"): "BOOL"}


def infer_grpc(address: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    try:
        req = []
        for name, arr in inputs.items():
            inp = grpcclient.InferInput(name, list(arr.shape), _WIRE[arr.dtype])
            inp.set_data_from_numpy(np.ascontiguousarray(arr))
            req.append(inp)
        result = client.infer(model, req, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
        return [result.as_numpy(o) for o in outputs]
    finally:
        client.close()


def torch_reference(module, inputs: dict[str, Any], keywords: bool) -> list[np.ndarray]:
    """The module's outputs (flattened as the exporter flattens them) on numpy inputs."""
    import torch

    from tensorwire.export.inputs import flatten_outputs

    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.inference_mode():
        out = module(**tensors) if keywords else module(*tensors.values())
    return [t.numpy() for t in flatten_outputs(out)[0]]


def random_inputs(example: dict[str, Any], sizes: dict[str, int], dynamic: dict[str, dict[int, str]],
                  seed: int) -> dict[str, np.ndarray]:
    """Numpy inputs like ``example`` (name -> tensor) with dynamic axes set from ``sizes``."""
    from tensorwire.export.inputs import InputSpec, inputs_at

    specs = [InputSpec(n, t, dynamic.get(n, {})) for n, t in example.items()]
    return {s.name: t.numpy() for s, t in zip(specs, inputs_at(specs, sizes, seed))}
