"""Bind example inputs to forward() by name, call it, and say precisely why a call failed.

Users name inputs after forward()'s parameters (``--input mask:...``); binding them by position would
serve a graph whose ``mask`` input feeds ``x``. Everything downstream (both exporters, ONNX Runtime, the
parity runs) calls one flat adapter with the inputs in served order, which passes them on by keyword.
"""

from __future__ import annotations

import inspect
from typing import Any

from tensorwire.export.errors import ExportError
from tensorwire.export.inputs import InputSpec, flatten_outputs


def forward_signature(model) -> inspect.Signature | None:
    """``model.forward``'s signature (self excluded), or None when Python cannot tell."""
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def describe_signature(model) -> str:
    sig = forward_signature(model)
    return f"forward{sig}" if sig is not None else "forward(...)"


def _parameter_names(sig: inspect.Signature | None) -> list[str]:
    if sig is None:
        return []
    return [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_binding(model, params: list[str]) -> None:
    """Refuse keyword names forward() does not take, and required parameters left out, listing the signature."""
    sig = forward_signature(model)
    if sig is None:
        return
    try:
        sig.bind(**dict.fromkeys(params))
    except TypeError as exc:
        raise ExportError(
            f"the inputs {params} do not fit {describe_signature(model)}: {exc}. Name every required "
            "parameter, and only parameters forward() takes (CLI: --input PARAM:SHAPE:DTYPE; to serve a "
            "parameter under another name: --input SERVED=PARAM:SHAPE:DTYPE)"
        ) from None


def normalize_inputs(model, example_inputs, input_names=None) -> tuple[list[InputSpec], list[str] | None, list[str]]:
    """Bind the example to forward() by name; returns (specs, keyword parameters or None, notes).

    A dict's keys are forward()'s parameters; ``input_names`` then renames them for serving (same order).
    A tuple is bound by name when ``input_names`` are forward()'s parameters (in any order), by position
    otherwise (with a note in the report saying which name feeds which parameter).
    """
    import torch

    tensors, keys = _tensors_of(example_inputs, torch)
    sig = forward_signature(model)
    if keys is not None:
        served = _served_names(keys, input_names)
        check_binding(model, keys)
        params, notes = keys, []
    else:
        served, params, notes = _bind_tuple(model, sig, len(tensors), input_names)
    for name, t in zip(served, tensors):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"example input {name!r} is a {type(t).__name__}, not a tensor")
    if len(served) != len(tensors) or len(set(served)) != len(served):
        raise ExportError(f"need {len(tensors)} distinct input names, got {served}")
    return [InputSpec(n, t.detach()) for n, t in zip(served, tensors)], params, notes


def _tensors_of(example_inputs, torch) -> tuple[list[Any], list[str] | None]:
    if isinstance(example_inputs, torch.Tensor):
        return [example_inputs], None
    if isinstance(example_inputs, dict):
        return list(example_inputs.values()), [str(k) for k in example_inputs]
    if isinstance(example_inputs, (tuple, list)):
        return list(example_inputs), None
    raise ExportError(f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors, "
                      f"got {type(example_inputs).__name__}")


def _served_names(keys: list[str], input_names) -> list[str]:
    """A dict's keys are parameters; ``input_names`` may rename them, but never swap two of them."""
    if input_names is None:
        return keys
    names = [str(n) for n in input_names]
    if len(names) != len(keys):
        raise ExportError(f"input_names {names} has {len(names)} names for {len(keys)} example inputs {keys}")
    moved = [n for i, n in enumerate(names) if n in keys and keys.index(n) != i]
    if moved:
        raise ExportError(
            f"input_names {names} reorders the example dict's keys {keys} ({moved} would be served as "
            "another parameter): the keys are forward()'s parameters and input_names renames them in the same "
            "order; list them in the dict's order"
        )
    return names


def _bind_tuple(model, sig, count: int, input_names) -> tuple[list[str], list[str] | None, list[str]]:
    params = _parameter_names(sig)
    if input_names is None:
        if count == 1:
            return ["input"], None, []
        names = params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]
        return names, None, []
    names = [str(n) for n in input_names]
    known = [n for n in names if n in params]
    if known and len(known) == len(names):
        check_binding(model, names)
        return names, names, []
    if known:
        raise ExportError(
            f"input names {names} mix forward()'s parameters {known} with names it does not take "
            f"{[n for n in names if n not in params]}; {describe_signature(model)}. Name the parameters "
            "(CLI: --input SERVED=PARAM:SHAPE:DTYPE to serve one under another name)"
        )
    notes = []
    if params and sig is not None and not any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        pairs = ", ".join(f"{n!r} -> {p}" for n, p in zip(names, params))
        notes.append(f"inputs bound to {describe_signature(model)} by position ({pairs}): none of the input "
                     "names is a parameter name")
    return names, None, notes


def make_adapter(model, params: list[str] | None):
    """Wrap ``model`` so it takes the inputs positionally (``params``: their keywords) and returns a flat tuple."""
    import torch

    class FlatIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args):
            return tuple(flatten_outputs(call_module(self.inner, params, list(args)))[0])

    return FlatIO().eval()


def call_module(model, params: list[str] | None, tensors: list[Any]) -> Any:
    """``model(**dict(zip(params, tensors)))``, or positionally when ``params`` is None."""
    return model(**dict(zip(params, tensors))) if params is not None else model(*tensors)


def reference_outputs(model, specs: list[InputSpec], params: list[str] | None) -> Any:
    """PyTorch's raw result on the examples; a failing call becomes an ExportError naming the input to fix."""
    import torch

    tensors = [s.example for s in specs]
    try:
        with torch.inference_mode():
            return call_module(model, params, tensors)
    except Exception as exc:  # noqa: BLE001 - whatever the user's forward() raises
        raise explain_call_failure(model, specs, params, exc) from None


def explain_call_failure(model, specs: list[InputSpec], params: list[str] | None, exc: BaseException) -> ExportError:
    """Find the one input whose dtype, changed, makes the call work; name it, else list every input."""
    import torch

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    tensors = [s.example for s in specs]
    for i, spec in enumerate(specs):
        for alt in _alternatives(spec.example, torch):
            trial = list(tensors)
            trial[i] = alt
            try:
                with torch.inference_mode():
                    call_module(model, params, trial)
            except Exception:  # noqa: BLE001, S112 - this dtype does not help either; try the next
                continue
            want, got = _dtype_name(alt.dtype), _dtype_name(spec.example.dtype)
            shape = "x".join(str(d) for d in spec.shape)
            return ExportError(
                f"input {spec.name!r} is {got} but the module needs {want} there ({type(exc).__name__}: {first}). "
                f"Pass it as {want}: --input {spec.name}:{shape}:{want} (Python: a {want} example tensor)"
            )
    listed = ", ".join(f"{s.name} {_dtype_name(s.example.dtype)}{list(s.shape)}" for s in specs)
    return ExportError(f"the module fails on the example inputs ({listed}): {type(exc).__name__}: {first}. "
                       f"Check each --input's shape and dtype against {describe_signature(model)}")


def _alternatives(t, torch) -> list[Any]:
    if t.is_floating_point():
        return [torch.zeros(t.shape, dtype=torch.int64)]
    if t.dtype == torch.int32:
        return [t.to(torch.int64), t.to(torch.float32)]
    return [t.to(torch.float32)] + ([t.to(torch.int64)] if t.dtype == torch.bool else [])


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")
