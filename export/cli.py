"""`tensorwire export`: a built-in architecture or the user's own module to a model repository entry."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from tensorwire.export.builtin import BUILTIN_NAMES
from tensorwire.export.errors import ExportError
from tensorwire.export.inputs import INT_DEFAULT_RANGE, example_inputs, load_factory, parse_input
from tensorwire.export.pipeline import DEFAULT_MAX_BATCH_SIZE

DEFAULT_REPOSITORY = "model_repository"


def add_parser(subparsers) -> None:
    """Add the ``export`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "export", help="export a PyTorch model to a verified ONNX model repository entry",
        formatter_class=_DefaultsShown,
        description="Export a built-in architecture (random weights) or your own module "
                    "(--factory file.py:function) to <model-repository>/<name>/<version>/, checking parity "
                    "with PyTorch before anything is written.",
    )
    _add_model_arguments(p)
    _add_output_arguments(p)
    _add_check_arguments(p)
    _show_defaults(p)
    p.set_defaults(func=run)


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to what does not already say its default (switches included)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default, in the help text itself (what `--help` prints and what
    tests/package/test_cli_help.py reads), not only through the formatter."""
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
    for action in p._actions:
        if action.option_strings and action.help and not isinstance(action, switches) \
                and "%(default)" not in action.help and "default" not in action.help.lower():
            action.help += " (default: none)" if action.default is None else " (default: %(default)s)"


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", choices=BUILTIN_NAMES, help="built-in architecture (or use --factory)")
    p.add_argument("--factory", metavar="FILE.py:FUNCTION", default=None,
                   help="a function returning your torch.nn.Module")
    p.add_argument("--size", choices=("small", "full"), default="small", help="built-in size")
    p.add_argument("--input", dest="inputs", action="append", default=[],
                   metavar="[SERVED=]PARAM:SHAPE:DTYPE[:LOW..HIGH]",
                   help="an input of the factory's module, bound to forward()'s parameter PARAM by name, served "
                        "as SERVED if given, e.g. input_ids:2x128:int64:0..30521 (repeatable). Without a range: "
                        f"floats random normal, integers {INT_DEFAULT_RANGE[0]}..{INT_DEFAULT_RANGE[1]}, *mask all "
                        "ones, token_type_ids zeros, position_ids 0,1,2...")
    p.add_argument("--output", dest="outputs", action="append", default=None, metavar="NAME",
                   help="output name, in order (repeatable) (default: the module's own dict keys, else output_N)")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXIS:LABEL",
                   help="a dynamic axis, e.g. input_ids:1:sequence (repeatable) (default: axis 0 of every input "
                        "and output is the batch when --max-batch-size > 0, every other axis fixed)")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="model name in the repository (default: the built-in's name "
                                                "or the factory function's)")
    p.add_argument("--model-repository", dest="repository", default=DEFAULT_REPOSITORY,
                   metavar="DIR", help="model repository root")
    p.add_argument("--version", type=int, default=None,
                   help="version folder to write (default: the next after the latest, 1 for a new name)")
    p.add_argument("--overwrite", action="store_true", help="replace --version N if it exists")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help="largest batch the server forms; 0 for a model without a batch axis")
    p.add_argument("--fp16", action="store_true", help="serve an FP16 graph (FP32 inputs and outputs)")
    p.add_argument("--int8", nargs="?", const="auto", default=None, choices=("auto", "dynamic", "static"),
                   help="serve an INT8 graph: dynamic (transformers), static QDQ (convolutions, calibrated), "
                        "auto picks by the graph (--int8 alone = auto)")
    p.add_argument("--calibration", metavar="FILE.npz", default=None,
                   help="calibration and validation data for --int8: one array per input, samples on axis 0")


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset; a lower one than the exporter's that fails the checker or parity falls back "
                        "to the exporter's, with a note (default: the exporter's own)")
    p.add_argument("--strict-opset", action="store_true", help="fail instead of falling back from --opset")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto tries dynamo (torch.export), then the TorchScript tracer")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's offline optimization and fusions")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity relative tolerance against PyTorch")
    p.add_argument("--atol", type=float, default=1e-4, help="parity absolute tolerance against PyTorch")
    p.add_argument("--parity-shape", action="append", default=None, metavar="LABEL=N[,LABEL=N]",
                   help="extra sizes to check parity at, e.g. batch=3,sequence=40 (repeatable) (default: "
                        "batch 1 and the max batch, every other dynamic label at half its export size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example and parity inputs")


def parse_dynamic(items: list[str]) -> dict[str, dict[int, str]] | None:
    if not items:
        return None
    axes: dict[str, dict[int, str]] = {}
    for text in items:
        m = re.fullmatch(r"([^:]+):(-?\d+):([\w.\-]+)", text)
        if not m:
            raise ExportError(f"--dynamic {text!r}: expected NAME:AXIS:LABEL, e.g. input_ids:0:batch")
        axes.setdefault(m.group(1), {})[int(m.group(2))] = m.group(3)
    return axes


def parse_parity_shapes(items: list[str] | None) -> list[dict[str, int]] | None:
    if not items:
        return None
    out = []
    for text in items:
        try:
            out.append({k: int(v) for k, v in (kv.split("=") for kv in text.split(","))})
        except ValueError:
            raise ExportError(f"--parity-shape {text!r}: expected LABEL=N[,LABEL=N]") from None
    return out


class _Progress:
    def __init__(self, out) -> None:
        self.out = out

    def __call__(self, step: str, state: str, detail: str) -> None:
        if state == "start":
            print(f"  {step:<9} ...", file=self.out, flush=True)
        else:
            mark = {"ok": "done", "skipped": "skip", "fallback": "done", "failed": "FAIL"}.get(state, state)
            print(f"  {step:<9} {mark:<4} {detail}", file=self.out, flush=True)


def served_signature(report) -> list[str]:
    """Every served input and output with each dim: its size where fixed, its label where dynamic."""
    from tensorwire.proto.datatypes import BY_ONNX_ELEM_TYPE

    batch = report.max_batch_size
    lines = [f"  serves     max batch {batch} (axis 0 of every tensor is the batch)" if batch > 0
             else "  serves     no batch axis (max batch 0): every request has exactly these shapes"]
    for kind, rows in (("input", report.inputs), ("output", report.outputs)):
        for row in rows:
            dt = BY_ONNX_ELEM_TYPE.get(row["elem_type"])
            dims = [_dim(d, i, batch) for i, d in enumerate(row["dims"])]
            lines.append(f"    {kind:<6} {row['name']:<22} {dt.name if dt else row['elem_type']!s:<6} "
                         f"[{', '.join(dims)}]")
    return lines


def _dim(d: int | str, axis: int, batch: int) -> str:
    if axis == 0 and batch > 0:
        return f"batch 1..{batch}"
    return f"{d} fixed" if isinstance(d, int) else f"{d} (dynamic)"


def summary(report) -> str:
    """The table a person reads after an export."""
    lines = [
        f"model {report.name} version {report.version} -> {report.model_path}",
        f"  exporter   {report.exporter}" + "".join(
            f"   ({a['exporter']} failed: {a['reason'][:120]})" for a in report.exporter_attempts if not a["ok"]),
        f"  opset      {report.opset}" + (f"   ({report.opset_note})" if report.opset_note else ""),
        f"  nodes      exported {report.nodes_exported} -> simplified {report.nodes_simplified} -> served "
        f"{report.nodes_served}" + (f"   ({report.simplify_note})" if report.simplify_note else ""),
        f"  optimize   {report.optimize_note}" + (f"; fused {report.fusion['fused_operators']}"
                                                   if report.fusion.get("fused_operators") else ""),
        f"  file size  {report.file_size_bytes / 1e6:.2f} MB",
        *served_signature(report),
        f"  parity     rtol={report.rtol:g} atol={report.atol:g}: "
        f"{'PASS' if report.parity_ok else 'FAIL'}, max abs diff {report.parity_max_abs_diff:.3g}",
    ]
    for case in report.parity:
        shapes = " ".join(f"{k}{tuple(v)}" for k, v in case.input_shapes.items())
        worst = max(case.outputs, key=lambda d: d.max_abs_diff, default=None)
        rel = f"{worst.max_rel_diff:.3g}" if worst else "-"
        lines.append(f"    {case.label:<22} max_abs={case.max_abs_diff:<10.3g} max_rel={rel:<10} {shapes}"
                     + (f"  {case.error}" if case.error else ""))
    if report.precision:
        lines += _precision_lines(report.precision)
    lines.append("  timings    " + ", ".join(f"{s.name} {s.seconds:.2f}s" for s in report.steps)
                 + f"; total {report.total_seconds:.2f}s")
    for w in report.warnings:
        lines.append(f"  warning    {w}")
    return "\n".join(lines)


def _precision_lines(p: dict[str, Any]) -> list[str]:
    mode = p["mode"]
    lines = [f"  {mode:<10} {p.get('method', mode)}; size {p['bytes_fp32'] / 1e6:.1f} -> "
             f"{p[f'bytes_{mode}'] / 1e6:.1f} MB",
             f"    latency  eager {p['latency_ms_eager']:.3f} ms, fp32 {p['latency_ms_fp32']:.3f} ms, {mode} "
             f"{p[f'latency_ms_{mode}']:.3f} ms (x{p['speedup']} vs fp32, x{p['speedup_vs_eager']} vs eager)",
             f"    drift    max abs {p['max_abs_drift']:.3g}, max rel {p['max_rel_drift']:.3g}, cosine "
             f"{p['min_cosine']:.5f} on the parity inputs"]
    if "validation" in p:
        v = p["validation"]
        lines.append(f"    on data  {v['samples']} samples: max abs {v['max_abs_drift']:.3g}, "
                     f"cosine {v['min_cosine']:.5f}")
    if p.get("calibration"):
        lines.append(f"    calibrated on {p['calibration']}")
    if p.get("left_in_float"):
        lines.append(f"    left in float (no int8 CPU kernel or not quantized): {p['left_in_float']}")
    lines.append(f"    note     {p['note']}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run the export the arguments describe; 0 on success, 1 on an export failure, 2 on bad usage."""
    out = sys.stdout
    try:
        kwargs = _build(args)
    except ExportError as exc:
        print(f"tensorwire export: error: {exc}", file=sys.stderr)
        return 2
    from tensorwire.export import export_model

    print(f"exporting {kwargs['name']} to {args.repository}", file=out, flush=True)
    try:
        report = export_model(progress=_Progress(out), **kwargs)
    except ExportError as exc:
        print(f"tensorwire export: FAILED: {exc}", file=sys.stderr)
        return 1
    print(summary(report), file=out)
    return 0


def _build(args: argparse.Namespace) -> dict[str, Any]:
    if bool(args.model) == bool(args.factory):
        raise ExportError(f"give either a built-in model name ({', '.join(BUILTIN_NAMES)}) or --factory")
    common = dict(repository=args.repository, version=args.version, overwrite=args.overwrite, opset=args.opset,
                  strict_opset=args.strict_opset, max_batch_size=args.max_batch_size, simplify=not args.no_simplify,
                  optimize=not args.no_optimize, fp16=args.fp16, int8=args.int8 or False,
                  calibration=args.calibration, rtol=args.rtol, atol=args.atol,
                  parity_shapes=parse_parity_shapes(args.parity_shape), exporter=args.exporter, seed=args.seed)
    if args.model:
        if args.inputs:
            raise ExportError("--input is for --factory modules; built-ins bring their own example inputs")
        from tensorwire.export import build_builtin

        b = build_builtin(args.model, size=args.size)
        return dict(model=b.module, example_inputs=b.example_inputs, name=args.name or b.name,
                    input_names=b.input_names, output_names=args.outputs or b.output_names,
                    dynamic_axes=parse_dynamic(args.dynamic) or b.dynamic_axes, **common)
    if not args.inputs:
        raise ExportError("--factory needs at least one --input PARAM:SHAPE:DTYPE")
    specs = [parse_input(t) for t in args.inputs]
    params = [s.parameter for s in specs]
    if len(set(params)) != len(params):
        raise ExportError(f"--input names parameter(s) {sorted({p for p in params if params.count(p) > 1})} twice")
    module, func = load_factory(args.factory)
    tensors = example_inputs(specs, args.seed)
    return dict(model=module, example_inputs=_bound_example(module, specs, tensors), name=args.name or func,
                input_names=[s.name for s in specs], output_names=args.outputs,
                dynamic_axes=parse_dynamic(args.dynamic), **common)


def _bound_example(module, specs, tensors) -> Any:
    """``{parameter: tensor}`` (bound by name), or a tuple for a ``forward(*args)`` without named parameters."""
    from tensorwire.export.binding import forward_signature

    sig = forward_signature(module)
    named = [] if sig is None else [p.name for p in sig.parameters.values() if p.kind != p.VAR_POSITIONAL]
    var_positional = sig is not None and any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if var_positional and not any(s.parameter in named for s in specs):
        return tuple(tensors)
    return {s.parameter: t for s, t in zip(specs, tensors)}
