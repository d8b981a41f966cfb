"""Check a served export against PyTorch: ask a KServe v2 server over gRPC, compare.

Used by the export tests; handy for users who want the same evidence for their own model. The call goes
through tensorwire's own client (:class:`tensorwire.client.InferenceClient`), so this works with only
tensorwire installed (NVIDIA's tritonclient is a test-only dependency).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorwire.client import InferenceClient

INFER_TIMEOUT_S = 300.0  # a full-size model's first call on a small CPU can take a while; never hang forever


def infer_grpc(address: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """``model``'s ``outputs``, in that order, for ``inputs`` sent in raw form to the server at ``address``."""
    with InferenceClient(address, timeout=INFER_TIMEOUT_S) as client:
        result = client.infer(model, {n: np.ascontiguousarray(a) for n, a in inputs.items()}, outputs=outputs)
    return [result[o] for o in outputs]


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
