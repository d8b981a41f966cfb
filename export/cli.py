"""`tensorwire export`: a built-in architecture or the user's own module to a model repository entry."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from tensorwire.export.errors import ExportError

BUILTIN_CHOICES = ("mlp", "resnet50", "bert", "distilbert", "vit")
_DTYPES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "fp64": "float64",
           "double": "float64", "int": "int32", "long": "int64", "bool": "bool", "int8": "int8",
           "uint8": "uint8", "int16": "int16", "int32": "int32", "int64": "int64", "float32": "float32",
           "float16": "float16", "float64": "float64", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def add_parser(subparsers) -> None:
    """Add the ``export`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "export", help="export a PyTorch model to a verified ONNX model repository entry",
        description="Export a built-in architecture (random weights) or your own module "
                    "(--factory file.py:function) to <repository>/<name>/, checking parity with PyTorch.",
    )
    p.add_argument("model", nargs="?", choices=BUILTIN_CHOICES, help="built-in architecture")
    p.add_argument("--factory", metavar="FILE.py:FUNCTION", help="function returning your torch.nn.Module")
    p.add_argument("--size", choices=("small", "full"), default="small", help="built-in size (default small)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DTYPE[:LOW..HIGH]",
                   help="an input of the factory's module, e.g. input_ids:2x128:int64:0..30521 (repeatable)")
    p.add_argument("--output", dest="outputs", action="append", default=None, metavar="NAME",
                   help="output name, in order (repeatable)")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXIS:LABEL",
                   help="a dynamic axis, e.g. input_ids:0:batch (repeatable; default: axis 0 of everything "
                        "is the batch when --max-batch-size > 0)")
    p.add_argument("--name", help="model name in the repository (default: the built-in's name or the function's)")
    p.add_argument("--repository", default="model_repository", metavar="DIR", help="model repository root")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    p.add_argument("--no-simplify", action="store_true")
    p.add_argument("--no-optimize", action="store_true")
    p.add_argument("--fp16", action="store_true", help="serve an FP16 graph (FP32 inputs/outputs)")
    p.add_argument("--int8", action="store_true", help="serve a dynamically INT8-quantized graph")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--parity-shape", action="append", default=None, metavar="LABEL=N[,LABEL=N]",
                   help="extra sizes to check parity at, e.g. batch=3,sequence=40 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def parse_input(text: str) -> tuple[str, list[int], str, tuple[int, int] | None]:
    """``name:2x128:int64[:0..999]`` -> (name, [2, 128], "int64", (0, 999))."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ExportError(f"--input {text!r}: expected NAME:SHAPE:DTYPE[:LOW..HIGH], e.g. input_ids:1x128:int64")
    name, shape_s, dtype_s = parts[:3]
    try:
        shape = [int(d) for d in shape_s.lower().split("x")] if shape_s else []
    except ValueError:
        raise ExportError(f"--input {text!r}: shape must be sizes joined by 'x', e.g. 2x3x224x224") from None
    dtype = _DTYPES.get(dtype_s.lower())
    if dtype is None:
        raise ExportError(f"--input {text!r}: unknown dtype {dtype_s!r} (e.g. float32, int64, bool)")
    value_range = None
    if len(parts) == 4:
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[3])
        if not m:
            raise ExportError(f"--input {text!r}: range must be LOW..HIGH (inclusive), e.g. 0..999")
        value_range = (int(m.group(1)), int(m.group(2)))
    return name, shape, dtype, value_range


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


def load_factory(spec: str):
    """Import ``path/to/file.py:function`` and call the function for the module."""
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


def example_inputs(specs: list[tuple[str, list[int], str, tuple[int, int] | None]], seed: int) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for _name, shape, dtype, value_range in specs:
        dt = getattr(torch, dtype)
        if dt == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif dt.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dt)
            if value_range:
                lo, hi = value_range
                t = (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(dt)
        else:
            lo, hi = value_range or (0, 1)
            t = torch.randint(lo, hi + 1, shape, generator=gen, dtype=dt)
        tensors.append(t)
    return tensors


class _Progress:
    def __init__(self, out) -> None:
        self.out = out

    def __call__(self, step: str, state: str, detail: str) -> None:
        if state == "start":
            print(f"  {step:<9} ...", file=self.out, flush=True)
        else:
            mark = {"ok": "done", "skipped": "skip", "fallback": "done", "failed": "FAIL"}.get(state, state)
            print(f"  {step:<9} {mark:<4} {detail}", file=self.out, flush=True)


def summary(report) -> str:
    """The table a person reads after an export."""
    lines = [
        f"model {report.name} v{report.version} -> {report.model_path}",
        f"  exporter   {report.exporter}" + "".join(
            f"   ({a['exporter']} failed: {a['reason'][:120]})" for a in report.exporter_attempts if not a["ok"]),
        f"  opset      {report.opset}",
        f"  nodes      exported {report.nodes_exported} -> simplified {report.nodes_simplified} -> served "
        f"{report.nodes_served}" + (f"   ({report.simplify_note})" if report.simplify_note else ""),
        f"  optimize   {report.optimize_note}",
        f"  file size  {report.file_size_bytes / 1e6:.2f} MB",
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
        p = report.precision
        mode = p["mode"]
        lines.append(f"  {mode:<10} drift max abs {p['max_abs_drift']:.3g} (rel {p['max_rel_drift']:.3g}); "
                     f"latency {p['latency_ms_fp32']:.3f} ms fp32 -> {p[f'latency_ms_{mode}']:.3f} ms "
                     f"(x{p['speedup']})")
    lines.append("  timings    " + ", ".join(f"{s.name} {s.seconds:.2f}s" for s in report.steps)
                 + f"; total {report.total_seconds:.2f}s")
    for w in report.warnings:
        lines.append(f"  warning    {w}")
    return "\n".join(lines)


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
        raise ExportError("give either a built-in model name (mlp, resnet50, bert, distilbert, vit) or --factory")
    common = dict(repository=args.repository, version=args.version, opset=args.opset,
                  max_batch_size=args.max_batch_size, simplify=not args.no_simplify,
                  optimize=not args.no_optimize, fp16=args.fp16, int8=args.int8, rtol=args.rtol, atol=args.atol,
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
        raise ExportError("--factory needs at least one --input NAME:SHAPE:DTYPE")
    specs = [parse_input(t) for t in args.inputs]
    module, func = load_factory(args.factory)
    tensors = example_inputs(specs, args.seed)
    return dict(model=module, example_inputs=tuple(tensors), name=args.name or func,
                input_names=[s[0] for s in specs], output_names=args.outputs,
                dynamic_axes=parse_dynamic(args.dynamic), **common)
