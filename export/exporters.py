"""torch.onnx.export, both ways: the dynamo (torch.export) exporter first, the TorchScript tracer second.

Each attempt is recorded with its reason for failing. The tracer's TracerWarnings are kept with the
user's source line: they mark data-dependent control flow that the trace froze into the graph.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from tensorwire.export.errors import ExportError
from tensorwire.export.report import TracerNote

EXPORTERS = ("dynamo", "torchscript")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ExportResult:
    model: Any                                    # onnx.ModelProto
    exporter: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    tracer_warnings: list[TracerNote] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    native: Any = None                            # the exporter's own-opset graph when ``model`` was converted
    conversion_error: str = ""                    # why converting to the requested opset raised (model = native)


def available_exporters() -> list[str]:
    """The exporters this torch offers: dynamo needs onnxscript; the TorchScript one may be removed."""
    import importlib.util

    import torch

    found = []
    if "dynamo" in _export_params(torch) and importlib.util.find_spec("onnxscript") is not None:
        found.append("dynamo")
    found.append("torchscript")
    return found


def _export_params(torch) -> set[str]:
    import inspect

    return set(inspect.signature(torch.onnx.export).parameters)


def export_graph(adapter, args: list[Any], in_names: list[str], out_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]], opset: int | None, exporter: str = "auto",
                 custom_translation_table: dict | None = None) -> ExportResult:
    """Export with the first exporter that works; raise ExportError naming each one's reason.

    ``opset`` None: the exporter's own opset. The dynamo exporter builds its own and a lower requested
    opset is converted from it, keeping the original in ``result.native`` for the check step's fallback.
    """
    offered = available_exporters()
    order = [e for e in EXPORTERS if e in offered] if exporter == "auto" else [exporter]
    if exporter != "auto" and exporter not in offered:
        raise ExportError(f"exporter {exporter!r} is not offered by this torch installation "
                          f"(available: {offered}; the dynamo exporter needs `pip install onnxscript`)")
    if not order:
        raise ExportError("this torch offers no ONNX exporter (install onnxscript for the dynamo exporter)")
    attempts: list[dict[str, Any]] = []
    failures: list[tuple[str, BaseException]] = []
    for name in order:
        t0 = time.perf_counter()
        try:
            if name == "dynamo":
                result = _export_dynamo(adapter, args, in_names, out_names, dynamic_axes, opset,
                                        custom_translation_table)
            else:
                result = _export_torchscript(adapter, args, in_names, out_names, dynamic_axes, opset)
        except Exception as exc:  # noqa: BLE001 - each exporter fails in its own ways; we report them all
            reason = summarize_error(exc)
            attempts.append({"exporter": name, "ok": False, "seconds": time.perf_counter() - t0,
                             "reason": reason})
            failures.append((name, exc))
            continue
        attempts.append({"exporter": name, "ok": True, "seconds": time.perf_counter() - t0, "reason": ""})
        result.attempts = attempts
        return result
    raise _failure(failures, attempts)


def _failure(failures: list[tuple[str, BaseException]], attempts: list[dict[str, Any]]) -> ExportError:
    ops = []
    for _, exc in failures:
        op = unsupported_operator(exc)
        if op and op not in ops:
            ops.append(op)
    reasons = "\n".join(f"  - {a['exporter']}: {a['reason']}" for a in attempts)
    if ops:
        op = ops[0]
        msg = (
            f"the ONNX exporters cannot translate operator `{op}`: no ONNX translation is registered for it.\n"
            f"{reasons}\n"
            "What to do: (1) express it with standard torch ops in the module (or swap the module for "
            "an exportable one at export time); (2) for the dynamo exporter, give a translation: "
            f"export_model(..., custom_translation_table={{torch.ops.{op.replace('::', '.')}.default: fn}}) "
            "where fn is an onnxscript function; (3) for the TorchScript exporter, register one with "
            f"torch.onnx.register_custom_op_symbolic('{op}', symbolic_fn, opset). The server then needs "
            "nothing extra as long as the translation uses standard ONNX ops."
        )
    else:
        msg = f"every ONNX exporter failed:\n{reasons}"
    err = ExportError(msg)
    err.attempts = attempts
    return err


def summarize_error(exc: BaseException) -> str:
    """One or two lines that say why an exporter failed (torch's messages run to pages)."""
    text = _ANSI.sub("", str(exc))
    m = re.search(r"## Exception summary\s*\n+(.+?)(?:\n\n|\n\(Refer|\Z)", text, re.S)
    if m:
        text = m.group(1)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("⬆")]
    summary = " | ".join(lines[:3]) if lines else type(exc).__name__
    return f"{type(exc).__name__}: {summary}"[:800]


def unsupported_operator(exc: BaseException) -> str | None:
    """The operator an exporter had no translation for, as ``namespace::name``, if that was the failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = _ANSI.sub("", str(exc))
        m = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", text)
        if m:
            return m.group(1).replace(".", "::", 1)
        m = re.search(r"unrecognized namespace ([\w]+::[\w]+)", text) or re.search(
            r"Exporting the operator '?([\w]+::[\w]+)'? to ONNX opset version \d+ is not supported", text)
        if m:
            return m.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _quiet():
    """Silence torch's progress prints and log spam; keep warnings for the caller to record."""
    names = ["torch", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _widen_size_one(args, in_names, dynamic_axes):
    """torch.export specializes a dynamic axis whose example size is 1; repeat such examples to 2."""
    import torch

    out, widened = [], []
    for name, t in zip(in_names, args):
        for axis in dynamic_axes.get(name, {}):
            if t.shape[axis] == 1:
                t = torch.cat([t, t], dim=axis)
                widened.append(f"{name}[{axis}]")
        out.append(t)
    return out, widened


def _export_dynamo(adapter, args, in_names, out_names, dynamic_axes, opset: int | None, table) -> ExportResult:
    import torch

    dim = torch.export.Dim.DYNAMIC
    ex_args, widened = _widen_size_one(args, in_names, dynamic_axes)
    notes = []
    if widened:
        try:
            with torch.inference_mode():
                adapter(*ex_args)
            notes.append(f"dynamo: example axes {widened} of size 1 repeated to 2 so torch.export keeps "
                         "them dynamic")
        except Exception:  # noqa: BLE001 - the module only takes size 1 there; export as given
            ex_args = args
    shapes = (tuple({a: dim for a in dynamic_axes.get(n, {})} or None for n in in_names),)
    with warnings.catch_warnings(record=True), _quiet(), torch.inference_mode():
        warnings.simplefilter("always")
        program = torch.onnx.export(
            adapter, tuple(ex_args), None, input_names=in_names, output_names=out_names,
            opset_version=None, dynamo=True, dynamic_shapes=shapes, verbose=False,
            custom_translation_table=table, external_data=False,
        )
    model = program.model_proto
    _name_dims(model, in_names, out_names, dynamic_axes)
    if opset is None or opset == _opset_of(model):
        return ExportResult(model, "dynamo", notes=notes)
    try:
        converted = convert_opset(model, opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises anything on ops it cannot map
        return ExportResult(model, "dynamo", notes=notes, conversion_error=summarize_error(exc))
    return ExportResult(converted, "dynamo", notes=notes, native=model)


def _opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert_opset(model, target: int):
    """``model`` converted to opset ``target`` with the converter torch itself uses (onnxscript's, which
    falls back to onnx's C++ converter); raises with the converter's reason when it cannot.

    The dynamo exporter builds its own opset and converts the same way when given ``opset_version``, but
    a failed conversion there only logs and leaves the graph as it was; converting here keeps the
    reason, and the exporter's own graph for the fallback, without exporting twice.
    """
    import onnx_ir
    from onnxscript import version_converter

    ir_model = onnx_ir.serde.deserialize_model(model)
    log = logging.getLogger("onnxscript.version_converter")
    records: list[logging.LogRecord] = []
    handler = _ListHandler(records)
    saved = (log.level, log.propagate)
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version_converter.convert_version(ir_model, target, fallback=True)
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    converted = onnx_ir.serde.serialize_model(ir_model)
    if _opset_of(converted) != target:
        left = f"the converter left the graph at opset {_opset_of(converted)}"
        raise RuntimeError(_converter_reason(records) or left)
    return converted


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _converter_reason(records: list[logging.LogRecord]) -> str:
    for rec in reversed(records):
        if rec.exc_info and rec.exc_info[1] is not None:
            text = _ANSI.sub("", str(rec.exc_info[1])).strip().splitlines()
            return text[-1].split("failed: ")[-1][:300] if text else type(rec.exc_info[1]).__name__
    return records[-1].getMessage()[:300] if records else ""


def _export_torchscript(adapter, args, in_names, out_names, dynamic_axes, opset) -> ExportResult:
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, _quiet(), torch.inference_mode():
        warnings.simplefilter("always")
        torch.onnx.export(
            adapter, tuple(args), buf, input_names=in_names, output_names=out_names,
            opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes or None,
            do_constant_folding=True,
        )
    notes = []
    for w in caught:
        if w.category.__name__ == "TracerWarning":
            src = linecache.getline(w.filename, w.lineno).strip()
            note = TracerNote(str(w.message).split(".")[0], w.filename, w.lineno, src)
            if all(n.where() != note.where() for n in notes):
                notes.append(note)
    return ExportResult(onnx.load_from_string(buf.getvalue()), "torchscript", tracer_warnings=notes)


def _name_dims(model, in_names, out_names, dynamic_axes) -> None:
    """Give the dynamo exporter's symbols (s0, s77...) the user's labels everywhere in the graph."""
    rename: dict[str, str] = {}
    g = model.graph
    for vi in list(g.input) + list(g.output):
        for axis, label in dynamic_axes.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].dim_param:
                rename.setdefault(dims[axis].dim_param, label)
    if not rename:
        return
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
