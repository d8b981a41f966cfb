"""Get one model ready for the engines: build it, export it to ONNX, draw inputs, record eager's answers.

Runs in a child process (``python -m tensorwire.bench.prepare JOB.json MANIFEST.json``) so that the
benchmark's parent never imports torch and never holds a model. Every engine then reads the same
files: the weights (so eager and torch.compile run the exact module that was exported, even when a
factory draws different random weights on each call), one input set per batch size, and eager
PyTorch's outputs on those inputs (the reference each engine's parity is checked against).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.export.builtin import BUILTIN_NAMES


@dataclass
class Built:
    """A module and how to call it: the names and order of its inputs and outputs."""

    module: Any
    example_inputs: Any            # tensor, tuple, or dict of named tensors
    input_names: list[str]
    output_names: list[str] | None
    dynamic_axes: dict[str, Any] | None
    keywords: bool                 # call as module(**inputs) rather than module(*inputs)
    description: str


def parse_model(text: str, inputs: list[str], size: str, seq: int | None) -> dict[str, Any]:
    """``bert`` or ``path/model.py:factory`` -> the JSON-able source description the children rebuild from."""
    if text in BUILTIN_NAMES:
        overrides = {"seq": seq} if seq and text in ("bert", "distilbert") else {}
        return {"kind": "builtin", "name": text, "size": size, "overrides": overrides}
    if ":" in text and text.rpartition(":")[0].endswith(".py"):
        if not inputs:
            raise ValueError(f"model {text!r} is a factory: give its inputs with --input NAME:SHAPE:DTYPE[:LOW..HIGH]")
        path, _, func = text.rpartition(":")
        return {"kind": "factory", "spec": f"{Path(path).resolve()}:{func}", "name": func, "inputs": list(inputs)}
    raise ValueError(f"unknown model {text!r}: use a built-in ({', '.join(BUILTIN_NAMES)}) or path/to/file.py:factory")


def build(source: dict[str, Any], batch: int | None = None) -> Built:
    """The module (random weights, eval mode) and example inputs at ``batch`` (or the source's own)."""
    if source["kind"] == "builtin":
        from tensorwire.export import build_builtin

        kw = dict(source["overrides"], size=source["size"])
        if batch is not None:
            kw["batch"] = batch
        b = build_builtin(source["name"], **kw)
        return Built(b.module, b.example_inputs, list(b.input_names), list(b.output_names), b.dynamic_axes,
                     isinstance(b.example_inputs, dict), b.description)
    from tensorwire.export.inputs import example_inputs, load_factory

    specs = _factory_specs(source, batch)
    module, _ = load_factory(source["spec"])
    module.eval()
    return Built(module, tuple(example_inputs(specs, seed=0)), [s.name for s in specs], None, None, False,
                 source["spec"])


def ordered_inputs(built: Built) -> dict[str, np.ndarray]:
    """The example inputs as numpy arrays, keyed by input name, in the module's order."""
    ex = built.example_inputs
    tensors = list(ex.values()) if isinstance(ex, dict) else ([ex] if hasattr(ex, "shape") else list(ex))
    return {n: t.detach().cpu().numpy() for n, t in zip(built.input_names, tensors)}


def run_eager(module: Any, inputs: dict[str, np.ndarray], keywords: bool) -> list[np.ndarray]:
    """One eager forward pass under inference_mode; outputs flattened in the exporter's order."""
    import torch

    from tensorwire.export.inputs import flatten_outputs

    tensors = {n: torch.from_numpy(a) for n, a in inputs.items()}
    with torch.inference_mode():
        out = module(**tensors) if keywords else module(*tensors.values())
    return [t.detach().cpu().numpy() for t in flatten_outputs(out)[0]]


def prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Export and write everything the engines need; returns the manifest."""
    import torch

    from tensorwire.export import export_model

    torch.set_num_threads(job["threads"])
    work = Path(job["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    source, batches = job["source"], job["batches"]
    name = source["name"]

    t0 = time.perf_counter()
    built = build(source)
    build_s = time.perf_counter() - t0
    weights = work / "weights.pt"
    torch.save(built.module.state_dict(), weights)

    t0 = time.perf_counter()
    report = export_model(built.module, built.example_inputs, name=name, repository=work / "repository",
                          input_names=built.input_names, output_names=built.output_names,
                          dynamic_axes=built.dynamic_axes, max_batch_size=max(8, *batches),
                          rtol=job["rtol"], atol=job["atol"], version=1, overwrite=True)
    export_s = time.perf_counter() - t0
    output_names = [o["name"] for o in report.outputs] if report.outputs else list(built.output_names or [])

    per_batch = {}
    for b in batches:
        inputs = inputs_at(source, b, built.input_names)
        ref = run_eager(built.module, inputs, built.keywords)
        if not output_names:
            output_names = [f"output_{i}" for i in range(len(ref))]
        in_path, ref_path = work / f"inputs_b{b}.npz", work / f"reference_b{b}.npz"
        np.savez(in_path, **inputs)
        np.savez(ref_path, **{f"o{i}": a for i, a in enumerate(ref)})
        per_batch[str(b)] = {"inputs": str(in_path), "reference": str(ref_path),
                             "input_shapes": {n: list(a.shape) for n, a in inputs.items()},
                             "input_dtypes": {n: str(a.dtype) for n, a in inputs.items()}}
    return {
        "name": name,
        "source": source,
        "description": built.description,
        "parameters": int(sum(p.numel() for p in built.module.parameters())),
        "input_names": built.input_names,
        "output_names": output_names,
        "keywords": built.keywords,
        "weights": str(weights),
        "onnx": report.model_path,
        "onnx_bytes": report.file_size_bytes,
        "build_seconds": build_s,
        "export_seconds": export_s,
        "exporter": report.exporter,
        "export_parity_ok": report.parity_ok,
        "batches": per_batch,
        "variants": variants(job, report.model_path, ordered_inputs(built), work),
    }


def variants(job: dict[str, Any], onnx_path: str, feeds: dict[str, np.ndarray], work: Path) -> dict[str, Any]:
    """The reduced-precision graphs the job's engines run (INT8 as ``tensorwire export --int8`` makes it)."""
    import onnx

    from tensorwire.bench.engines import VARIANTS
    from tensorwire.export import precision, quantize

    wanted = {VARIANTS[e] for e in job.get("engines", []) if e in VARIANTS}
    out: dict[str, Any] = {}
    if not wanted:
        return out
    model = onnx.load(onnx_path)
    if "int8" in wanted:
        method = quantize.choose_method("auto", model)
        randoms = quantize.random_samples(feeds, seed=1) if method == "static" else None
        q, info = quantize.int8(model, feeds, method, None, randoms)
        onnx.save(q, str(work / "int8.onnx"))
        out |= {"int8": str(work / "int8.onnx"), "int8_info": info}
    if "fp16" in wanted:
        onnx.save(precision.to_fp16(model), str(work / "fp16.onnx"))
        out["fp16"] = str(work / "fp16.onnx")
    return out


def inputs_at(source: dict[str, Any], batch: int, input_names: list[str]) -> dict[str, np.ndarray]:
    """Inputs at ``batch``: a built-in's own (realistic padding masks), or a factory's from its --input specs."""
    if source["kind"] == "builtin":
        return ordered_inputs(build(source, batch=batch))
    from tensorwire.export.inputs import example_inputs

    tensors = example_inputs(_factory_specs(source, batch), seed=batch)
    return {n: t.numpy() for n, t in zip(input_names, tensors)}


def _factory_specs(source: dict[str, Any], batch: int | None) -> list:
    from tensorwire.export.inputs import parse_input

    specs = [parse_input(t) for t in source["inputs"]]
    if batch is None:
        return specs
    return [s._replace(shape=[batch, *s.shape[1:]] if s.shape else s.shape) for s in specs]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        manifest = prepare(job)
    except Exception as exc:  # the parent shows the reason in the results instead of crashing the run
        manifest = {"error": f"{type(exc).__name__}: {exc}"}
        Path(argv[1]).write_text(json.dumps(manifest))
        raise
    Path(argv[1]).write_text(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
