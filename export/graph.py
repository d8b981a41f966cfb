"""Facts about an ONNX graph and the checks that must hold before it is served."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tensorwire.export.errors import ExportError

TWO_GB = 2**31 - 1


def op_histogram(model) -> dict[str, int]:
    """Node count per op type (domain-qualified for non-standard domains), most common first."""
    counts = Counter(
        (f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in model.graph.node
    )
    return dict(counts.most_common())


def node_count(model) -> int:
    return len(model.graph.node)


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def dims_of(value_info) -> list[int | str]:
    """A graph input/output's dims: ints where static, the symbol (or '?') where not."""
    out: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def io_table(model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, element types and dims of the graph's inputs and outputs (initializers excluded)."""
    inits = {i.name for i in model.graph.initializer}

    def row(vi):
        return {"name": vi.name, "elem_type": vi.type.tensor_type.elem_type, "dims": dims_of(vi)}

    return ([row(v) for v in model.graph.input if v.name not in inits], [row(v) for v in model.graph.output])


def check_model(model) -> None:
    """onnx.checker with full checking plus strict shape inference; ExportError on any complaint."""
    import onnx

    try:
        if model.ByteSize() < TWO_GB:
            onnx.checker.check_model(model, full_check=True)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        else:  # the checker cannot hold >2 GB in one proto; check the structure without the weights
            onnx.checker.check_model(model, full_check=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise ExportError(f"the exported graph fails onnx.checker / shape inference: {exc}") from exc


def check_dynamic_axes(model, dynamic_axes: dict[str, dict[int, str]], max_batch_size: int) -> None:
    """Every declared dynamic axis must be symbolic in the graph; raises on a static one.

    An exporter that specialized an axis to the example's size gives a graph that refuses every other
    size: catch it here, not when the first batch of 2 reaches the server.
    """
    inputs, outputs = io_table(model)
    problems = []
    for row in inputs + outputs:
        for axis, label in dynamic_axes.get(row["name"], {}).items():
            dims = row["dims"]
            if axis >= len(dims):
                problems.append(f"{row['name']!r} has rank {len(dims)} in the graph, no axis {axis} ({label})")
            elif isinstance(dims[axis], int):
                problems.append(
                    f"{row['name']!r} axis {axis} ({label}) was declared dynamic but the graph fixes it to "
                    f"{dims[axis]}"
                )
    if max_batch_size > 0:
        for row in inputs + outputs:
            if row["dims"] and isinstance(row["dims"][0], int):
                problems.append(f"{row['name']!r} has a static batch axis ({row['dims'][0]}) but "
                                f"max_batch_size={max_batch_size}")
    if problems:
        raise ExportError(
            "dynamic-axes check failed: the graph is static where requests will vary, so a request "
            "with another size (e.g. batch 2) would fail:\n  - " + "\n  - ".join(problems)
            + "\nFix the module so that size is not computed into a constant (e.g. use x.shape[0] in tensor "
            "ops, not int(x.shape[0]) or a hard-coded size), or declare the axis static."
        )


def converted_problem(model, parity_run) -> str:
    """Why a graph converted to a lower opset cannot be served ('' if it can): the checker, or parity.

    ``parity_run(model)`` returns parity cases at the export shape.
    """
    try:
        check_model(model)
    except ExportError as exc:
        return "fails onnx.checker: " + str(exc).split(": ", 1)[-1].strip().splitlines()[0][:200]
    try:
        cases = parity_run(model)
    except Exception as exc:  # noqa: BLE001 - ORT refuses graphs in many ways
        return f"does not load in ONNX Runtime: {str(exc).strip().splitlines()[0][:200]}"
    bad = [c for c in cases if not c.ok]
    if bad:
        return (f"fails parity ({bad[0].error})" if bad[0].error
                else f"fails parity (max abs diff {bad[0].max_abs_diff:.3g})")
    return ""
