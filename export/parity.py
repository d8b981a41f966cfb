"""PyTorch vs ONNX Runtime on fresh random inputs, at the export shape and at other sizes of every
dynamic axis: the evidence that the served graph is the same model."""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorwire.export import runtime
from tensorwire.export.inputs import BATCH, MASK_LIKE, SEQUENCE_LIKE, InputSpec, inputs_at
from tensorwire.export.report import OutputDiff, ParityCase


def labels_of(specs: list[InputSpec]) -> dict[str, int]:
    """Each dynamic label and its size in the example."""
    sizes: dict[str, int] = {}
    for s in specs:
        for axis, label in s.dynamic.items():
            sizes.setdefault(label, s.shape[axis])
    return sizes


def parity_plan(specs: list[InputSpec], max_batch_size: int,
                parity_shapes: list[dict[str, int]] | None = None) -> list[tuple[str, dict[str, int]]]:
    """The shapes to test: the export shape, then other sizes for each dynamic label.

    Default: batch 1 (or 2 when exported at 1) and max_batch_size; every other label at half its
    export size (or +1 when that is 1), one label at a time so a failure points at its axis.
    """
    example = labels_of(specs)
    plan: list[tuple[str, dict[str, int]]] = [("export shape", dict(example))]
    if parity_shapes is not None:
        for sizes in parity_shapes:
            unknown = set(sizes) - set(example)
            if unknown:
                from tensorwire.export.errors import ExportError

                raise ExportError(f"parity_shapes names {sorted(unknown)}, not a dynamic label {sorted(example)}")
            plan.append((",".join(f"{k}={v}" for k, v in sizes.items()), {**example, **sizes}))
        return plan
    for label, size in example.items():
        if label == BATCH:
            others = [1 if size != 1 else 2]
            if max_batch_size > max(size, others[0]):
                others.append(max_batch_size)
        else:
            others = [size // 2 if size > 2 else size + 1]
        for value in others:
            plan.append((f"{label}={value}", {**example, label: value}))
    return plan


def to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().cpu().numpy()


def compare(names: list[str], ref: list[np.ndarray], got: list[np.ndarray], rtol: float, atol: float
            ) -> list[OutputDiff]:
    """Max abs and rel difference per output; ok means numpy.allclose(got, ref, rtol, atol)."""
    rows = []
    for name, r, g in zip(names, ref, got):
        if tuple(r.shape) != tuple(g.shape):
            rows.append(OutputDiff(name, list(g.shape), float("inf"), float("inf"), False))
            continue
        r64, g64 = r.astype(np.float64), np.asarray(g).astype(np.float64)
        diff = np.abs(r64 - g64)
        finite_mismatch = np.isnan(r64) != np.isnan(g64)
        diff = np.where(np.isnan(r64) & np.isnan(g64), 0.0, diff)
        max_abs = float(np.max(diff)) if diff.size else 0.0
        big = np.abs(r64) >= max(atol, 1e-12)
        max_rel = float(np.max(diff[big] / np.abs(r64[big]))) if big.any() else 0.0
        ok = bool(not finite_mismatch.any() and np.all(diff <= atol + rtol * np.abs(r64)))
        rows.append(OutputDiff(name, list(r.shape), max_abs, max_rel, ok))
    return rows


def torch_outputs(adapter, tensors: list[Any]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [to_numpy(o) for o in adapter(*tensors)]


def run_case(adapter, sess, specs: list[InputSpec], out_names: list[str], label: str, tensors: list[Any],
             rtol: float, atol: float) -> ParityCase:
    names = [s.name for s in specs]
    shapes = {s.name: list(t.shape) for s, t in zip(specs, tensors)}
    ref = torch_outputs(adapter, tensors)
    try:
        got = runtime.run(sess, names, [to_numpy(t) for t in tensors])
    except Exception as exc:  # noqa: BLE001 - ORT's error types vary
        return ParityCase(label, shapes, [], False, f"ONNX Runtime failed: {str(exc).strip().splitlines()[0][:400]}")
    diffs = compare(out_names, ref, got, rtol, atol)
    return ParityCase(label, shapes, diffs, all(d.ok for d in diffs))


def check_parity(adapter, sess, specs: list[InputSpec], out_names: list[str], plan, rtol: float, atol: float,
                 seed: int = 0, probes: list[tuple[str, list[Any]]] = ()) -> list[ParityCase]:
    """Every planned shape with fresh random inputs, then the explicit probes (label, tensors)."""
    cases = []
    for i, (label, sizes) in enumerate(plan):
        tensors = inputs_at(specs, sizes, seed + 1000 + i)
        cases.append(run_case(adapter, sess, specs, out_names, label, tensors, rtol, atol))
    for label, tensors in probes:
        cases.append(run_case(adapter, sess, specs, out_names, label, tensors, rtol, atol))
    return cases


def branch_probes(specs: list[InputSpec], seed: int) -> list[tuple[str, list[Any]]]:
    """Inputs meant to take the other side of a traced data-dependent branch: negated and scaled floats."""
    base = inputs_at(specs, labels_of(specs), seed + 7)
    if not any(t.is_floating_point() for t in base):
        return []
    neg = [-t if t.is_floating_point() else t for t in base]
    big = [t * 10 if t.is_floating_point() else t for t in base]
    return [("probe: negated inputs", neg), ("probe: inputs x10", big)]


def is_sequence_like(spec: InputSpec) -> bool:
    """Token ids, masks and the like: integer or bool, rank 2+, or named like them."""
    if spec.example.dim() < 2:
        return False
    return bool(SEQUENCE_LIKE.search(spec.name)) or not spec.example.is_floating_point()


def fixed_sequence_warnings(specs: list[InputSpec], max_batch_size: int) -> list[str]:
    """A sequence-like input whose non-batch axes are all fixed takes one length only: say so before serving."""
    out = []
    first = 1 if max_batch_size > 0 else 0
    for s in specs:
        fixed = [a for a in range(first, s.example.dim()) if a not in s.dynamic]
        if is_sequence_like(s) and fixed and not any(a >= first for a in s.dynamic):
            axis = fixed[0]
            out.append(f"{s.name!r} axis {axis} is fixed at {s.shape[axis]}: every request must have exactly "
                       f"{s.shape[axis]} there. To accept other lengths declare it dynamic (CLI: --dynamic "
                       f"{s.name}:{axis}:sequence, the same label on every input and output that shares it)")
    return out


def value_notes(specs: list[InputSpec]) -> list[str]:
    """How parity drew each input (fresh values like the example's), and the masks that may be all zeros."""
    lines = []
    for s in specs:
        ex = s.example
        if ex.is_floating_point():
            lines.append(f"  {s.name}: random normal with the example's mean and spread")
            continue
        lo, hi = (int(ex.min()), int(ex.max())) if ex.numel() else (0, 0)
        note = f"  {s.name}: random integers in {lo}..{hi} (the example's range)" if lo != hi else (
            f"  {s.name}: constant {lo} (as in the example)")
        if MASK_LIKE.search(s.name) and lo == 0 and hi >= 1:
            note += ("; as a mask, rows of all zeros mask every position: pass it as all ones "
                     f"(--input {s.name}:SHAPE:{str(ex.dtype).removeprefix('torch.')}:1..1)")
        lines.append(note)
    return lines


def failure_message(report, specs: list[InputSpec], rtol: float, atol: float) -> str:
    """Why parity failed, with the numbers, which inputs were random and how to give them valid values."""
    msg = format_failures(report.parity, rtol, atol)
    if any(not c.ok and c.error for c in report.parity) and not any(not c.ok and not c.error for c in report.parity):
        msg = "the graph does not run at every size its dynamic axes promise (dynamic-axes check):\n" + msg
    if report.tracer_warnings:
        msg += ("\nThe trace froze data-dependent control flow or values here (TracerWarning); "
                "inputs that take the other path get a wrong answer from the graph:\n  "
                + "\n  ".join(n.where() for n in report.tracer_warnings)
                + "\nRewrite it with tensor ops (torch.where, masks) or make it exportable by "
                  "torch.export (torch.cond).")
    msg += ("\nThe parity inputs were drawn at random like the examples:\n" + "\n".join(value_notes(specs))
            + "\nIf an input needs valid values (token ids below the vocabulary size, masks that keep some "
              "positions), set its range: CLI --input NAME:SHAPE:DTYPE:LOW..HIGH; Python: an example tensor "
              "with that range, or parity_inputs=[...].")
    return msg


def format_failures(cases: list[ParityCase], rtol: float, atol: float) -> str:
    lines = [f"parity failed (rtol={rtol:g}, atol={atol:g}):"]
    for c in cases:
        if c.error:
            lines.append(f"  {c.label}: {c.error}  inputs {c.input_shapes}")
        for d in c.outputs:
            flag = "ok " if d.ok else "BAD"
            lines.append(f"  {flag} {c.label:<24} {d.name:<20} max_abs={d.max_abs_diff:.3g} "
                         f"max_rel={d.max_rel_diff:.3g} shape={d.shape}")
    return "\n".join(lines)
