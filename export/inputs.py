"""Example inputs: named specs, a module adapter with a flat signature, fresh random inputs at any shape.

Users hand us a tensor, a tuple, or a dict of named tensors (as Hugging Face models take). Everything
downstream (both exporters, ONNX Runtime, the parity runs) wants one flat, ordered list of named
tensors in and a flat tuple of tensors out; the adapter gives them that.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from tensorwire.export.errors import ExportError

BATCH = "batch"


@dataclass
class InputSpec:
    """One named input: its example tensor and how to draw fresh values like it."""

    name: str
    example: Any                      # torch.Tensor
    dynamic: dict[int, str] = field(default_factory=dict)   # axis -> label

    @property
    def shape(self) -> list[int]:
        return list(self.example.shape)

    def shape_at(self, sizes: dict[str, int]) -> list[int]:
        """The example shape with every dynamic axis whose label is in ``sizes`` set to that size."""
        shape = self.shape
        for axis, label in self.dynamic.items():
            if label in sizes:
                shape[axis] = sizes[label]
        return shape


def normalize_inputs(model, example_inputs, input_names=None) -> tuple[list[InputSpec], bool]:
    """Turn a tensor / tuple / dict into ordered specs; returns (specs, call_with_keywords)."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        tensors, keywords = [example_inputs], False
        default_names = ["input"]
    elif isinstance(example_inputs, dict):
        tensors, keywords = list(example_inputs.values()), True
        default_names = [str(k) for k in example_inputs]
    elif isinstance(example_inputs, (tuple, list)):
        tensors, keywords = list(example_inputs), False
        default_names = _positional_names(model, len(tensors))
    else:
        raise ExportError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors, "
            f"got {type(example_inputs).__name__}"
        )
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"example input {default_names[i]!r} is a {type(t).__name__}, not a tensor")
    if keywords and input_names is not None and list(input_names) != default_names:
        raise ExportError(
            f"input_names {list(input_names)} differ from the example dict's keys {default_names}: the "
            "keys are the names the module is called with, so they are the input names"
        )
    names = list(input_names) if input_names is not None else default_names
    if len(names) != len(tensors) or len(set(names)) != len(names):
        raise ExportError(f"need {len(tensors)} distinct input names, got {names}")
    return [InputSpec(n, t.detach()) for n, t in zip(names, tensors)], keywords


def _positional_names(model, count: int) -> list[str]:
    if count == 1:
        return ["input"]
    try:
        params = [
            p.name for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def flatten_outputs(out) -> tuple[list[Any], list[str]]:
    """Flatten a module's result into tensors and default names (dict / ModelOutput keys kept)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out], ["output"]
    if isinstance(out, dict):  # includes transformers' ModelOutput
        items = [(str(k), v) for k, v in out.items() if v is not None]
        tensors, names = [], []
        for key, value in items:
            sub, sub_names = flatten_outputs(value)
            tensors += sub
            names += [key] if len(sub) == 1 else [f"{key}_{n}" for n in sub_names]
        return tensors, names
    if isinstance(out, (tuple, list)):
        tensors = []
        for value in out:
            if value is not None:
                tensors += flatten_outputs(value)[0]
        return tensors, ["output"] if len(tensors) == 1 else [f"output_{i}" for i in range(len(tensors))]
    raise ExportError(f"the module returned a {type(out).__name__}; export needs tensors (or tuples/dicts of them)")


def make_adapter(model, names: list[str], keywords: bool):
    """Wrap ``model`` so it takes the named inputs positionally and returns a flat tuple of tensors."""
    import torch

    class FlatIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args))) if keywords else self.inner(*args)
            return tuple(flatten_outputs(out)[0])

    return FlatIO().eval()


def random_like(spec: InputSpec, shape: list[int], generator) -> Any:
    """Fresh values shaped ``shape`` that look like the example: same dtype, same value range."""
    import torch

    ex = spec.example
    if ex.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if ex.is_floating_point():
        exf = ex.float()
        std = float(exf.std()) if ex.numel() > 1 else 1.0
        mean = float(exf.mean()) if ex.numel() else 0.0
        std = std if std > 0 else 1.0
        return (torch.randn(shape, generator=generator) * std + mean).to(ex.dtype)
    low = int(ex.min()) if ex.numel() else 0
    high = int(ex.max()) if ex.numel() else 1
    return torch.randint(low, high + 1, shape, generator=generator, dtype=ex.dtype)


def inputs_at(specs: list[InputSpec], sizes: dict[str, int], seed: int) -> list[Any]:
    """One fresh random input set with the dynamic axes set to ``sizes`` (label -> size)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [random_like(s, s.shape_at(sizes), gen) for s in specs]


def normalize_dynamic_axes(dynamic_axes, in_names: list[str], out_names: list[str],
                           ranks: dict[str, int], max_batch_size: int) -> dict[str, dict[int, str]]:
    """Resolve ``dynamic_axes`` to ``{tensor: {axis: label}}`` and check it against the batch contract.

    ``None`` means "batch axis 0 of everything" when ``max_batch_size > 0``. Lists of axes get labels
    (``batch`` for axis 0, ``<name>_dim<k>`` otherwise). Outputs not mentioned get axis 0 ``batch`` when
    batching is on.
    """
    known = set(in_names) | set(out_names)
    if dynamic_axes is None:
        resolved = {n: {0: BATCH} for n in in_names} if max_batch_size > 0 else {}
    else:
        resolved = {}
        for name, axes in dict(dynamic_axes).items():
            if name not in known:
                raise ExportError(f"dynamic_axes names {name!r}, which is neither an input {in_names} "
                                  f"nor an output {out_names}")
            if isinstance(axes, dict):
                resolved[name] = {int(a): str(lbl) for a, lbl in axes.items()}
            else:
                resolved[name] = {int(a): (BATCH if int(a) == 0 else f"{name}_dim{int(a)}") for a in axes}
    for name, axes in resolved.items():
        rank = ranks.get(name)
        for axis in axes:
            if rank is not None and not -rank <= axis < rank:
                raise ExportError(f"dynamic axis {axis} of {name!r} is out of range for rank {rank}")
        if rank is not None:
            resolved[name] = {a % rank: lbl for a, lbl in axes.items()}
    if max_batch_size > 0:
        for name in out_names:
            resolved.setdefault(name, {0: BATCH}).setdefault(0, BATCH)
        static = [n for n in in_names if 0 not in resolved.get(n, {})]
        if static:
            raise ExportError(
                f"max_batch_size={max_batch_size} promises requests with a leading batch axis of 1..{max_batch_size}, "
                f"but axis 0 of input(s) {static} is not declared dynamic, so the graph would be exported "
                f"with a static batch and a request with batch 2 would fail. Declare it: "
                f"dynamic_axes={{{static[0]!r}: {{0: 'batch'}}, ...}}, or pass max_batch_size=0 for a model "
                f"without a batch axis."
            )
    return resolved
