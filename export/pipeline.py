"""export_model: module -> exported, checked, simplified, optimized, parity-verified repository entry.

The export is a list of steps (eval, export, check, simplify, optimize, parity, precision, write) run in
order over one :class:`_Run`: each step reads the :class:`ExportOptions` and what the steps before it
left, and records what it did in the report. Nothing is written unless every step passes.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorwire.export import graph, optimize, parity, precision, repository, runtime
from tensorwire.export.binding import make_adapter, normalize_inputs, reference_outputs
from tensorwire.export.errors import ExportError, require
from tensorwire.export.exporters import export_graph
from tensorwire.export.inputs import flatten_outputs, normalize_dynamic_axes
from tensorwire.export.report import ExportReport, StepRecord

Progress = Callable[[str, str, str], None]
DEFAULT_MAX_BATCH_SIZE = 8


@dataclass
class ExportOptions:
    """Every export option; the keyword arguments of :func:`export_model` (see its docstring)."""

    name: str
    repository: str | Path
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    dynamic_axes: dict[str, Any] | None = None
    opset: int | None = None                 # None: the exporter's own opset
    strict_opset: bool = False               # fail instead of falling back to the exporter's opset
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    version: int | None = None               # None: the next free version
    overwrite: bool = False
    simplify: bool = True
    optimize: bool = True
    fp16: bool = False
    int8: bool | str = False                 # True / "auto", "dynamic", "static"
    calibration: Any = None                  # .npz path or {input name: array}, leading axis = samples
    rtol: float = 1e-3
    atol: float = 1e-4
    parity_shapes: list[dict[str, int]] | None = None
    exporter: str = "auto"
    parity_inputs: list[Any] | None = None
    precision_rtol: float | None = None
    precision_atol: float | None = None
    custom_translation_table: dict | None = None
    seed: int = 0

    @property
    def precision_mode(self) -> str | None:
        return "fp16" if self.fp16 else ("int8" if self.int8 else None)


@dataclass
class _Run:
    """What the steps hand each other."""

    model: Any
    example_inputs: Any
    opts: ExportOptions
    report: ExportReport
    specs: list[Any] = field(default_factory=list)
    params: list[str] | None = None
    adapter: Any = None
    out_names: list[str] = field(default_factory=list)
    axes: dict[str, dict[int, str]] = field(default_factory=dict)
    graph: Any = None                        # onnx.ModelProto, the current graph
    native: Any = None                       # the exporter's own-opset graph when ``graph`` was converted down
    served: Any = None
    session: Any = None                      # ORT session over the FP32 graph (parity)
    plan: list[tuple[str, dict[str, int]]] = field(default_factory=list)


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
    progress: Progress | None = None,
    **options: Any,
) -> ExportReport:
    """Export ``model`` to ``<repository>/<name>/<version>/`` and return the report; ExportError on any failure.

    ``example_inputs``: a tensor, a tuple of tensors or a dict ``{forward() parameter: tensor}``; inputs
    are bound to forward() by name (``input_names`` renames a dict's keys for serving). ``dynamic_axes``:
    ``{tensor_name: {axis: label}}``; ``None`` makes axis 0 of every input and output the batch axis when
    ``max_batch_size > 0``. ``opset``: None builds the exporter's own opset; a lower one is converted to and
    falls back (with a note) when the conversion fails the checker or parity, unless ``strict_opset``.
    ``version``: None writes the next version; N writes N and refuses an existing one unless ``overwrite``.
    ``parity_shapes``: extra sizes to test, e.g. ``[{"batch": 3, "sequence": 40}]``. ``parity_inputs``:
    explicit inputs (same form as ``example_inputs``) that must also match. ``exporter``: "auto" (dynamo,
    then TorchScript), "dynamo" or "torchscript". ``fp16`` / ``int8`` (True, "dynamic" or "static")
    serve a reduced-precision graph, ``calibration`` its calibration/validation data. Every option is a
    field of :class:`ExportOptions`. Nothing is written unless every check passes.
    """
    try:
        opts = ExportOptions(name=name, repository=repository, **options)
    except TypeError as exc:
        raise ExportError(f"export_model: {exc}; the options are ExportOptions' fields") from None
    return run_export(model, example_inputs, opts, progress)


def run_export(model, example_inputs, opts: ExportOptions, progress: Progress | None = None) -> ExportReport:
    """Run every step over ``model``; the model is handed back in the train/eval mode it came in."""
    torch = require("torch")
    require("onnx")
    require("onnxruntime")
    _validate(opts)
    report = ExportReport(name=opts.name, version=0, repository=str(opts.repository),
                          max_batch_size=opts.max_batch_size, rtol=opts.rtol, atol=opts.atol, versions=_versions())
    run = _Run(model, example_inputs, opts, report)
    t_start = time.perf_counter()
    was_training = bool(getattr(model, "training", False))
    try:
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        report.version = repository.resolve_version(opts.repository, opts.name, opts.version, opts.overwrite)
        for step_name, step in _steps(opts):
            with report.step(step_name, progress) as st:
                step(run, st)
        report.total_seconds = sum(s.seconds for s in report.steps)
        report.save(Path(report.config_path).parent / "export_report.json")
        return report
    except ExportError as exc:
        if exc.report is None:
            exc.report = report
        raise
    finally:
        if not report.total_seconds:  # a failed export: the wall time so far (a written one saved its steps' sum)
            report.total_seconds = time.perf_counter() - t_start
        if was_training:
            model.train()


def _validate(opts: ExportOptions) -> None:
    if opts.fp16 and opts.int8:
        raise ExportError("choose one of fp16 and int8")
    if opts.int8 not in (False, True, "auto", "dynamic", "static"):
        raise ExportError(f"int8 must be True, 'auto', 'dynamic' or 'static', got {opts.int8!r}")
    if opts.opset is not None and opts.opset < 17:
        raise ExportError(f"opset {opts.opset} is too old: use 17 or newer (or leave it out for the exporter's own)")
    if opts.calibration is not None and not opts.int8:
        raise ExportError("calibration data is for int8 exports: pass int8=True (CLI --int8) with it")


def _steps(opts: ExportOptions) -> list[tuple[str, Callable[[_Run, StepRecord], None]]]:
    steps = [("eval", _eval), ("export", _export), ("check", _check), ("simplify", _simplify),
             ("optimize", _optimize), ("parity", _parity)]
    if opts.precision_mode:
        steps.append((opts.precision_mode, _precision))
    return [*steps, ("write", _write)]


def _eval(run: _Run, st: StepRecord) -> None:
    """eval() mode, inputs bound to forward(), PyTorch's reference outputs, the dynamic axes resolved."""
    model, report, opts = run.model, run.report, run.opts
    if model.training:
        msg = (f"{type(model).__name__} came in training mode: switched to eval() for export, so "
               "dropout is off and batch norm uses its running statistics")
        warnings.warn(msg, UserWarning, stacklevel=5)  # the caller of tensorwire.export.export_model
        report.warnings.append(msg)
        st.detail = "was in training mode: switched to eval()"
    model.eval()
    run.specs, run.params, notes = normalize_inputs(model, run.example_inputs, opts.input_names)
    report.warnings += notes
    run.adapter = make_adapter(model, run.params)
    ref_outputs, default_names = flatten_outputs(reference_outputs(model, run.specs, run.params))
    run.out_names = list(opts.output_names) if opts.output_names is not None else default_names
    if len(run.out_names) != len(ref_outputs):
        raise ExportError(f"the module returns {len(ref_outputs)} tensors but output_names has "
                          f"{len(run.out_names)}: {run.out_names}")
    ranks = {s.name: s.example.dim() for s in run.specs} | {n: t.dim() for n, t in zip(run.out_names, ref_outputs)}
    in_names = [s.name for s in run.specs]
    run.axes = normalize_dynamic_axes(opts.dynamic_axes, in_names, run.out_names, ranks, opts.max_batch_size)
    for s in run.specs:
        s.dynamic = run.axes.get(s.name, {})
        if opts.max_batch_size > 0 and 0 in s.dynamic and s.shape[0] > opts.max_batch_size:
            raise ExportError(f"example batch {s.shape[0]} of {s.name!r} exceeds max_batch_size {opts.max_batch_size}")
    report.dynamic_axes = run.axes
    report.warnings += parity.fixed_sequence_warnings(run.specs, opts.max_batch_size)


def _export(run: _Run, st: StepRecord) -> None:
    """The graph from the first exporter that works, at its own opset (converted down when asked)."""
    opts, report = run.opts, run.report
    in_names = [s.name for s in run.specs]
    try:
        result = export_graph(run.adapter, [s.example for s in run.specs], in_names, run.out_names, run.axes,
                              opts.opset, opts.exporter, opts.custom_translation_table)
    except ExportError as exc:
        report.exporter_attempts = getattr(exc, "attempts", [])
        raise
    run.graph, run.native = result.model, result.native
    if result.conversion_error:
        _serve_native(run, f"could not be made: {result.conversion_error}")
    report.exporter, report.exporter_attempts = result.exporter, result.attempts
    report.tracer_warnings = result.tracer_warnings
    report.warnings += result.notes
    failed = [a for a in result.attempts if not a["ok"]]
    st.detail = result.exporter + (f" (fallback: {failed[0]['exporter']} failed: {failed[0]['reason'][:160]})"
                                   if failed else "")
    if failed:
        st.status = "fallback"
    for note in result.tracer_warnings:
        report.warnings.append(f"TracerWarning at {note.where()}: {note.message}")


def _check(run: _Run, st: StepRecord) -> None:
    """onnx.checker, the dynamic axes, and a down-converted opset's parity (else the exporter's own graph)."""
    report = run.report
    if run.native is not None:
        _keep_converted_or_native(run)
    graph.check_model(run.graph)
    graph.check_dynamic_axes(run.graph, run.axes, run.opts.max_batch_size)
    report.opset = graph.opset_of(run.graph)
    report.nodes_exported = graph.node_count(run.graph)
    report.ops_exported = graph.op_histogram(run.graph)
    st.detail = f"opset {report.opset}, {report.nodes_exported} nodes" + (
        f"; {report.opset_note}" if report.opset_note else "")


def _keep_converted_or_native(run: _Run) -> None:
    why = graph.converted_problem(run.graph, lambda g: parity.check_parity(
        run.adapter, runtime.session(g), run.specs, run.out_names, parity.parity_plan(run.specs, 0, [])[:1],
        run.opts.rtol, run.opts.atol, run.opts.seed))
    if why:
        run.graph = run.native
        _serve_native(run, why)
    run.native = None


def _serve_native(run: _Run, why: str) -> None:
    """The requested opset's graph ``why``: serve the exporter's own (``run.graph``), or fail when insisted on."""
    asked, native = run.opts.opset, graph.opset_of(run.graph)
    if run.opts.strict_opset:
        raise ExportError(f"opset {asked} was required (strict_opset / --strict-opset), but the exporter's opset "
                          f"{native} graph converted to {asked} {why}. Leave the opset out to serve opset {native}.")
    run.report.opset_note = f"opset {asked} conversion {why}; serving the exporter's opset {native}"
    run.report.warnings.append(run.report.opset_note)


def _simplify(run: _Run, st: StepRecord) -> None:
    report = run.report
    if run.opts.simplify:
        outcome = optimize.simplify(run.graph, run.axes, [s.name for s in run.specs], _probe(run))
        report.simplified, report.simplify_note = outcome.applied, outcome.note
        run.graph = outcome.model
        st.status = "ok" if outcome.applied else "skipped"
    else:
        report.simplify_note, st.status = "disabled", "skipped"
    report.nodes_simplified = graph.node_count(run.graph)
    report.ops_simplified = graph.op_histogram(run.graph)
    st.detail = f"{report.nodes_exported} -> {report.nodes_simplified} nodes" + (
        f"; {report.simplify_note}" if report.simplify_note else "")


def _probe(run: _Run) -> list[Any]:
    """Inputs at a size other than the export's: a rewrite must keep working there."""
    run.plan = parity.parity_plan(run.specs, run.opts.max_batch_size, run.opts.parity_shapes)
    sizes = run.plan[1][1] if len(run.plan) > 1 else run.plan[0][1]
    return [parity.to_numpy(t) for t in parity.inputs_at(run.specs, sizes, run.opts.seed + 99)]


def _optimize(run: _Run, st: StepRecord) -> None:
    """ORT's portable offline optimization, then its transformer fusions; each kept only where it pays."""
    report = run.report
    if not run.opts.optimize:
        report.optimize_note, st.status = "disabled", "skipped"
        return
    names = [s.name for s in run.specs]
    example = [parity.to_numpy(s.example) for s in run.specs]
    outcome = optimize.ort_optimize(run.graph, names, example, run.axes)
    report.optimized, report.optimize_note = outcome.applied, outcome.note
    run.graph = outcome.model
    fused = optimize.transformer_fusion(run.graph, names, example, run.axes, _probe(run))
    report.fusion = fused.stats
    if fused.applied:
        run.graph = fused.model
    st.status = "ok" if outcome.applied or fused.applied else "skipped"
    st.detail = "; ".join(n for n in (outcome.note, fused.note) if n)


def _parity(run: _Run, st: StepRecord) -> None:
    opts, report = run.opts, run.report
    if not run.plan:
        _probe(run)
    run.session = runtime.session(run.graph)
    probes = parity.branch_probes(run.specs, opts.seed) if report.tracer_warnings else []
    for i, extra in enumerate(opts.parity_inputs or []):
        extra_specs, _, _ = normalize_inputs(run.model, extra, [s.name for s in run.specs] if not run.params
                                             else None)
        probes.append((f"parity_inputs[{i}]", [s.example for s in extra_specs]))
    report.parity = parity.check_parity(run.adapter, run.session, run.specs, run.out_names, run.plan, opts.rtol,
                                        opts.atol, opts.seed, probes)
    report.parity_ok = all(c.ok for c in report.parity)
    st.detail = f"{len(report.parity)} cases, max abs diff {report.parity_max_abs_diff:.3g}"
    if not report.parity_ok:
        raise ExportError(parity.failure_message(report, run.specs, opts.rtol, opts.atol), report)


def _precision(run: _Run, st: StepRecord) -> None:
    """FP16 or INT8: the reduced graph, its drift against PyTorch and its latency against FP32 and eager."""
    opts = run.opts
    job = precision.PrecisionJob(mode=opts.precision_mode, int8=opts.int8, adapter=run.adapter, specs=run.specs,
                                 out_names=run.out_names, plan=run.plan, seed=opts.seed,
                                 rtol=opts.precision_rtol, atol=opts.precision_atol, calibration=opts.calibration)
    run.served, result = precision.reduce(run.graph, run.session, job)
    run.report.precision = result
    st.detail = precision.summary_line(result)
    if not result["ok"]:
        raise ExportError(precision.failure_message(result), run.report)


def _write(run: _Run, st: StepRecord) -> None:
    opts, report = run.opts, run.report
    served = run.served if run.served is not None else run.graph
    report.inputs, report.outputs = graph.io_table(served)
    report.nodes_served = graph.node_count(served)
    params = {"tensorwire.exporter": report.exporter, "tensorwire.opset": str(report.opset),
              "tensorwire.precision": report.precision.get("mode", "fp32")}
    cfg = repository.build_config(served, opts.name, opts.max_batch_size, params)
    paths = repository.write_entry(opts.repository, opts.name, report.version, served, cfg, opts.overwrite)
    report.model_path, report.config_path = str(paths["model"]), str(paths["config"])
    report.file_size_bytes = paths["model"].stat().st_size
    st.detail = f"version {report.version}: {paths['model']} ({report.file_size_bytes / 1e6:.1f} MB)"
