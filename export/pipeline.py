"""export_model: module -> exported, checked, simplified, optimized, parity-verified repository entry."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tensorwire.export import graph, optimize, parity, precision, repository, runtime
from tensorwire.export.errors import ExportError, require
from tensorwire.export.exporters import export_graph
from tensorwire.export.inputs import flatten_outputs, make_adapter, normalize_dynamic_axes, normalize_inputs
from tensorwire.export.report import ExportReport

Progress = Callable[[str, str, str], None]


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "transformers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def export_model(
    model,
    example_inputs,
    *,
    name: str,
    repository: str | Path,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, Any] | None = None,
    opset: int = 17,
    max_batch_size: int = 8,
    version: int = 1,
    simplify: bool = True,
    optimize: bool = True,
    fp16: bool = False,
    int8: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    parity_shapes: list[dict[str, int]] | None = None,
    progress: Progress | None = None,
    exporter: str = "auto",
    parity_inputs: list[Any] | None = None,
    precision_rtol: float | None = None,
    precision_atol: float | None = None,
    custom_translation_table: dict | None = None,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ``<repository>/<name>/`` and return the report; ExportError on any failure.

    ``example_inputs``: a tensor, a tuple of tensors (positional) or a dict (keyword, as Hugging Face
    models take). ``dynamic_axes``: ``{tensor_name: {axis: label}}``; ``None`` makes axis 0 of every
    input and output the batch axis when ``max_batch_size > 0``. ``parity_shapes``: extra sizes to test,
    e.g. ``[{"batch": 3, "sequence": 40}]``. ``parity_inputs``: explicit inputs (same form as
    ``example_inputs``) that must also match. ``exporter``: "auto" (dynamo, then TorchScript),
    "dynamo" or "torchscript". Nothing is written unless every check passes.
    """
    torch = require("torch")
    require("onnx")
    require("onnxruntime")
    if fp16 and int8:
        raise ExportError("choose one of fp16 and int8")
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: use 17 or newer")
    report = ExportReport(name=name, version=version, repository=str(repository), max_batch_size=max_batch_size,
                          rtol=rtol, atol=atol, versions=_versions())
    t_start = time.perf_counter()
    was_training = bool(getattr(model, "training", False))
    try:
        return _run(torch, model, example_inputs, report, locals(), progress)
    except ExportError as exc:
        if exc.report is None:
            exc.report = report
        raise
    finally:
        if not report.total_seconds:  # a failed export: the wall time so far (a written one saved its steps' sum)
            report.total_seconds = time.perf_counter() - t_start
        if was_training:
            model.train()


def _run(torch, model, example_inputs, report: ExportReport, opts: dict[str, Any], progress) -> ExportReport:
    max_batch_size = opts["max_batch_size"]
    with report.step("eval", progress) as st:
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            msg = (f"{type(model).__name__} came in training mode: switched to eval() for export, so "
                   "dropout is off and batch norm uses its running statistics")
            warnings.warn(msg, UserWarning, stacklevel=4)
            report.warnings.append(msg)
            st.detail = "was in training mode: switched to eval()"
        model.eval()
        specs, keywords = normalize_inputs(model, example_inputs, opts["input_names"])
        in_names = [s.name for s in specs]
        adapter = make_adapter(model, in_names, keywords)
        with torch.inference_mode():
            raw = model(**{s.name: s.example for s in specs}) if keywords else model(*[s.example for s in specs])
        ref_outputs, default_out = flatten_outputs(raw)
        out_names = list(opts["output_names"]) if opts["output_names"] is not None else default_out
        if len(out_names) != len(ref_outputs):
            raise ExportError(f"the module returns {len(ref_outputs)} tensors but output_names has "
                              f"{len(out_names)}: {out_names}")
        ranks = {s.name: s.example.dim() for s in specs} | {n: t.dim() for n, t in zip(out_names, ref_outputs)}
        axes = normalize_dynamic_axes(opts["dynamic_axes"], in_names, out_names, ranks, max_batch_size)
        for s in specs:
            s.dynamic = axes.get(s.name, {})
            for axis in s.dynamic:
                if max_batch_size > 0 and axis == 0 and s.shape[0] > max_batch_size:
                    raise ExportError(f"example batch {s.shape[0]} of {s.name!r} exceeds max_batch_size "
                                      f"{max_batch_size}")
        report.dynamic_axes = axes

    with report.step("export", progress) as st:
        try:
            result = export_graph(adapter, [s.example for s in specs], in_names, out_names, axes, opts["opset"],
                                  opts["exporter"], opts["custom_translation_table"])
        except ExportError as exc:
            report.exporter_attempts = getattr(exc, "attempts", [])
            raise
        model_proto = result.model
        report.exporter = result.exporter
        report.exporter_attempts = result.attempts
        report.tracer_warnings = result.tracer_warnings
        report.warnings += result.notes
        failed = [a for a in result.attempts if not a["ok"]]
        st.detail = f"{result.exporter}" + (f" (fallback: {failed[0]['exporter']} failed: "
                                            f"{failed[0]['reason'][:160]})" if failed else "")
        if failed:
            st.status = "fallback"
        for note in result.tracer_warnings:
            report.warnings.append(f"TracerWarning at {note.where()}: {note.message}")

    with report.step("check", progress) as st:
        graph.check_model(model_proto)
        graph.check_dynamic_axes(model_proto, axes, max_batch_size)
        report.opset = graph.opset_of(model_proto)
        report.nodes_exported = graph.node_count(model_proto)
        report.ops_exported = graph.op_histogram(model_proto)
        st.detail = f"opset {report.opset}, {report.nodes_exported} nodes"
        if report.opset != opts["opset"]:
            report.warnings.append(f"asked for opset {opts['opset']}, the {report.exporter} exporter produced "
                                   f"opset {report.opset} (its version conversion could not go lower)")

    plan = parity.parity_plan(specs, max_batch_size, opts["parity_shapes"])
    probe_sizes = plan[1][1] if len(plan) > 1 else plan[0][1]
    probe = [parity.to_numpy(t) for t in parity.inputs_at(specs, probe_sizes, opts["seed"] + 99)]
    example_np = [parity.to_numpy(s.example) for s in specs]

    with report.step("simplify", progress) as st:
        if opts["simplify"]:
            outcome = optimize.simplify(model_proto, axes, in_names, probe)
            report.simplified, report.simplify_note = outcome.applied, outcome.note
            model_proto = outcome.model
            st.status = "ok" if outcome.applied else "skipped"
        else:
            report.simplify_note, st.status = "disabled", "skipped"
        report.nodes_simplified = graph.node_count(model_proto)
        report.ops_simplified = graph.op_histogram(model_proto)
        st.detail = f"{report.nodes_exported} -> {report.nodes_simplified} nodes" + (
            f"; {report.simplify_note}" if report.simplify_note else "")

    with report.step("optimize", progress) as st:
        if opts["optimize"]:
            outcome = optimize.ort_optimize(model_proto, in_names, example_np, axes)
            report.optimized, report.optimize_note = outcome.applied, outcome.note
            model_proto = outcome.model
            st.status = "ok" if outcome.applied else "skipped"
        else:
            report.optimize_note, st.status = "disabled", "skipped"
        st.detail = report.optimize_note

    with report.step("parity", progress) as st:
        sess = runtime.session(model_proto)
        probes = parity.branch_probes(specs, opts["seed"]) if report.tracer_warnings else []
        for i, extra in enumerate(opts["parity_inputs"] or []):
            extra_specs, _ = normalize_inputs(model, extra, in_names if not keywords else None)
            probes.append((f"parity_inputs[{i}]", [s.example for s in extra_specs]))
        report.parity = parity.check_parity(adapter, sess, specs, out_names, plan, opts["rtol"], opts["atol"],
                                            opts["seed"], probes)
        report.parity_ok = all(c.ok for c in report.parity)
        st.detail = f"{len(report.parity)} cases, max abs diff {report.parity_max_abs_diff:.3g}"
        if not report.parity_ok:
            msg = parity.format_failures(report.parity, opts["rtol"], opts["atol"])
            if any(not c.ok and c.error for c in report.parity) and not any(
                not c.ok and not c.error for c in report.parity
            ):
                msg = ("the graph does not run at every size its dynamic axes promise (dynamic-axes check):\n"
                       + msg)
            if report.tracer_warnings:
                msg += ("\nThe trace froze data-dependent control flow or values here (TracerWarning); "
                        "inputs that take the other path get a wrong answer from the graph:\n  "
                        + "\n  ".join(n.where() for n in report.tracer_warnings)
                        + "\nRewrite it with tensor ops (torch.where, masks) or make it exportable by "
                          "torch.export (torch.cond).")
            raise ExportError(msg, report)

    served = model_proto
    if opts["fp16"] or opts["int8"]:
        mode = "fp16" if opts["fp16"] else "int8"
        with report.step(mode, progress) as st:
            served = precision.convert(model_proto, mode)
            graph.check_model(served)
            v_sess = runtime.session(served)
            p_rtol = opts["precision_rtol"] if opts["precision_rtol"] is not None else float("inf")
            p_atol = opts["precision_atol"] if opts["precision_atol"] is not None else float("inf")
            cases = parity.check_parity(adapter, v_sess, specs, out_names, plan, p_rtol, p_atol, opts["seed"])
            t32, tv = runtime.compare_latency_ms(sess, v_sess, in_names, example_np)
            drift = max((c.max_abs_diff for c in cases), default=float("nan"))
            rel = max((d.max_rel_diff for c in cases for d in c.outputs), default=float("nan"))
            report.precision = {
                "mode": mode, "max_abs_drift": drift, "max_rel_drift": rel,
                "cases": [{"label": c.label, "max_abs_diff": c.max_abs_diff, "ok": c.ok, "error": c.error}
                          for c in cases],
                "latency_ms_fp32": round(t32, 3), f"latency_ms_{mode}": round(tv, 3),
                "speedup": round(t32 / tv, 3) if tv > 0 else None,
                "bytes_fp32": model_proto.ByteSize(), f"bytes_{mode}": served.ByteSize(),
            }
            st.detail = f"drift max abs {drift:.3g}, latency {t32:.2f} -> {tv:.2f} ms"
            if not all(c.ok for c in cases):
                raise ExportError(f"{mode} drift exceeds the precision tolerance:\n"
                                  + parity.format_failures(cases, p_rtol, p_atol), report)

    with report.step("write", progress) as st:
        inputs, outputs = graph.io_table(served)
        report.inputs, report.outputs = inputs, outputs
        report.nodes_served = graph.node_count(served)
        params = {"tensorwire.exporter": report.exporter, "tensorwire.opset": str(report.opset),
                  "tensorwire.precision": report.precision.get("mode", "fp32")}
        cfg = repository.build_config(served, opts["name"], max_batch_size, params)
        paths = repository.write_entry(opts["repository"], opts["name"], opts["version"], served, cfg, report)
        report.model_path, report.config_path = str(paths["model"]), str(paths["config"])
        report.file_size_bytes = paths["model"].stat().st_size
        st.detail = f"{paths['model']} ({report.file_size_bytes / 1e6:.1f} MB)"
    report.total_seconds = sum(s.seconds for s in report.steps)
    report.save(paths["report"])
    return report
