"""Example inputs: named specs, a module adapter with a flat signature, fresh random inputs at any shape.

Users hand us a tensor, a tuple, or a dict of named tensors (as Hugging Face models take). Everything
downstream (both exporters, ONNX Runtime, the parity runs) wants one flat, ordered list of named
tensors in and a flat tuple of tensors out; the adapter gives them that.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tensorwire.export.errors import ExportError

BATCH = "batch"
# Integer inputs without a LOW..HIGH range are drawn from this one (inclusive): valid indices for any
# embedding of 10+ rows. Inputs named like masks, token types or positions get structured values instead.
INT_DEFAULT_RANGE = (0, 9)
MASK_LIKE = re.compile(r"(^|_)mask$")
ZERO_LIKE = re.compile(r"(^|_)(token_type|segment)_ids$")
POSITION_LIKE = re.compile(r"(^|_)position_ids$")
SEQUENCE_LIKE = re.compile(r"(^|_)(ids|mask)$|(^|_)(tokens|sequence|seq)$")
DTYPES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "fp64": "float64",
          "double": "float64", "int": "int32", "long": "int64", "bool": "bool", "int8": "int8",
          "uint8": "uint8", "int16": "int16", "int32": "int32", "int64": "int64", "float32": "float32",
          "float16": "float16", "float64": "float64", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class InputArg(NamedTuple):
    """One ``--input``: the served name, its shape, dtype, optional value range and forward()'s parameter."""

    name: str
    shape: list[int]
    dtype: str
    value_range: tuple[int, int] | None = None
    param: str = ""

    @property
    def parameter(self) -> str:
        return self.param or self.name


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


def parse_input(text: str) -> InputArg:
    """``[SERVED=]PARAM:2x128:int64[:0..999]`` -> InputArg(served, [2, 128], "int64", (0, 999), param)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ExportError(f"--input {text!r}: expected [SERVED=]PARAM:SHAPE:DTYPE[:LOW..HIGH], e.g. "
                          "input_ids:1x128:int64")
    served, _, param = parts[0].partition("=")
    if not served or (_ and not param):
        raise ExportError(f"--input {text!r}: the name must be PARAM or SERVED=PARAM")
    try:
        shape = [int(d) for d in parts[1].lower().split("x")] if parts[1] else []
    except ValueError:
        raise ExportError(f"--input {text!r}: shape must be sizes joined by 'x', e.g. 2x3x224x224") from None
    dtype = DTYPES.get(parts[2].lower())
    if dtype is None:
        raise ExportError(f"--input {text!r}: unknown dtype {parts[2]!r} (e.g. float32, int64, bool)")
    value_range = None
    if len(parts) == 4:
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[3])
        if not m or int(m.group(1)) > int(m.group(2)):
            raise ExportError(f"--input {text!r}: range must be LOW..HIGH (inclusive, LOW <= HIGH), e.g. 0..999")
        value_range = (int(m.group(1)), int(m.group(2)))
    return InputArg(served, shape, dtype, value_range, param)


def default_values(arg: InputArg) -> str:
    """How ``example_inputs`` fills an input given no range: the rule, for messages and docs."""
    name = arg.parameter
    if arg.value_range is not None:
        return f"random in {arg.value_range[0]}..{arg.value_range[1]}"
    if arg.dtype in ("float16", "float32", "float64", "bfloat16"):
        return "random normal"
    if MASK_LIKE.search(name):
        return "all ones (a mask that keeps every position)"
    if ZERO_LIKE.search(name):
        return "all zeros"
    if POSITION_LIKE.search(name):
        return "0, 1, 2, ... along the last axis"
    if arg.dtype == "bool":
        return "random True/False"
    return f"random in {INT_DEFAULT_RANGE[0]}..{INT_DEFAULT_RANGE[1]} (default range)"


def example_inputs(specs: list[InputArg], seed: int) -> list[Any]:
    """Example tensors for ``--input`` specs: the given range, else the defaults of :func:`default_values`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [_example(torch, arg, gen) for arg in specs]


def _example(torch, arg: InputArg, gen) -> Any:
    dt = getattr(torch, arg.dtype)
    shape, name = arg.shape, arg.parameter
    if arg.value_range is not None:
        lo, hi = arg.value_range
        if dt.is_floating_point:
            return (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(dt)
        if dt == torch.bool:
            return torch.randint(lo, hi + 1, shape, generator=gen).bool()
        return torch.randint(lo, hi + 1, shape, generator=gen, dtype=dt)
    if dt.is_floating_point:
        return torch.randn(shape, generator=gen).to(dt)
    if MASK_LIKE.search(name):
        return torch.ones(shape, dtype=dt)
    if ZERO_LIKE.search(name):
        return torch.zeros(shape, dtype=dt)
    if POSITION_LIKE.search(name) and shape:
        return torch.arange(shape[-1]).expand(shape).to(dt).contiguous()
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(INT_DEFAULT_RANGE[0], INT_DEFAULT_RANGE[1] + 1, shape, generator=gen, dtype=dt)


def load_factory(spec: str) -> tuple[Any, str]:
    """Import ``path/to/file.py:function`` and call the function for the module; (module, function name)."""
    path_s, _, func = spec.rpartition(":")
    if not path_s or not func:
        raise ExportError(f"--factory {spec!r}: expected path/to/file.py:function")
    path = Path(path_s)
    if not path.is_file():
        raise ExportError(f"--factory: no file {path}")
    mod_spec = importlib.util.spec_from_file_location(f"tensorwire_factory_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    mod_spec.loader.exec_module(module)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ExportError(f"--factory: {path} has no function {func!r}")
    return fn(), func
