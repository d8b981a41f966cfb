"""Issue evidence for throughput under load: dynamic batching off/on, 1 and 2 worker processes.

Three models, each served by a real ``tensorwire serve`` and loaded by ``tensorwire bench load``'s
generator at concurrency 1, 8 and 32:

- ``mlp_large``: 2048-4096-4096-1000 (29M parameters, 117 MB). A batch-1 run reads every weight for one
  row, so it is bound by memory bandwidth, and batching should multiply throughput.
- ``mlp_small``: 512-1024-1024-10. gRPC dominates; batching should cost nothing.
- ``distilbert``: DistilBERT-base (random weights) at sequence length 32, exported by tensorwire.export.

``tensorwire bench batching --out bench/results/batching [--duration S] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tensorwire.bench import arguments
from tensorwire.bench.load import LoadSettings, run_load
from tensorwire.bench.models import mlp_large_model, mlp_model, write_model
from tensorwire.bench.report import write_rows
from tensorwire.launcher import tensorwire_server

if TYPE_CHECKING:  # onnx is imported where a model is built: `tensorwire --help` must not need it
    pass

MODELS = ("mlp_large", "mlp_small", "distilbert")
MAX_BATCH = 32
QUEUE_DELAY_US = 500
CONCURRENCY = [1, 8, 32]


MODES = ("off", "on", "eager")  # no batcher; dynamic_batching with its delay; the same with eager_batching


def _config(mode: str) -> str:
    text = f"max_batch_size: {MAX_BATCH}\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n"
    if mode != "off":
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n"
    if mode == "eager":
        text += "optimization { eager_batching: true }\n"
    return text


def _add(repo: Path, name: str, model_file: Path) -> None:
    for mode in MODES:
        write_model(repo, f"{name}_{mode}", model_file, _config(mode))


def build_repository(root: Path, models: list[str]) -> dict[str, dict]:
    """Model files plus an off/on pair of configs for each; returns the load shapes per model."""
    import onnx

    repo = root / "models"
    shapes: dict[str, dict] = {}
    if "mlp_large" in models:
        onnx.save(mlp_large_model(), str(root / "mlp_large.onnx"))
        _add(repo, "mlp_large", root / "mlp_large.onnx")
        shapes["mlp_large"] = {}
    if "mlp_small" in models:
        onnx.save(mlp_model(), str(root / "mlp_small.onnx"))
        _add(repo, "mlp_small", root / "mlp_small.onnx")
        shapes["mlp_small"] = {}
    if "distilbert" in models:
        from tensorwire.export import build_builtin, export_model

        b = build_builtin("distilbert", size="full", seq=32)
        export_model(b.module, b.example_inputs, name="distilbert_export", repository=root / "export",
                     input_names=b.input_names, output_names=b.output_names, dynamic_axes=b.dynamic_axes,
                     max_batch_size=MAX_BATCH)
        _add(repo, "distilbert", root / "export" / "distilbert_export" / "1" / "model.onnx")
        shapes["distilbert"] = {n: [1, 32] for n in b.input_names}
    return shapes


def _only(root: Path, name: str) -> Path:
    """A repository holding just ``name`` (a link to its directory): in the default model control mode
    every model of a repository loads, and --load-model needs explicit mode, which --workers refuses."""
    single = root / "single" / name
    if not single.exists():
        single.mkdir(parents=True)
        (single / name).symlink_to(root / "models" / name, target_is_directory=True)
    return single


def run_batching(out: Path | None, duration: float, models: list[str], workers: list[int]) -> list[dict]:
    """Runs in a temporary directory that is removed afterwards (models, logs)."""
    with tempfile.TemporaryDirectory(prefix="tensorwire-bench-") as tmp:
        return _run_in(Path(tmp), out, duration, models, workers)


def _run_in(root: Path, out: Path | None, duration: float, models: list[str], workers: list[int]) -> list[dict]:
    shapes = build_repository(root, models)
    rows = []
    for model in models:
        for batching in MODES:
            name = f"{model}_{batching}"
            for w in workers:
                with tensorwire_server(_only(root, name), "--workers", str(w), workdir=root) as server:
                    payload = run_load(LoadSettings(target=server.address, model=name, concurrency=CONCURRENCY,
                                                    duration_s=duration, warmup_s=min(1.0, duration / 4),
                                                    shapes=shapes[model], progress=False))
                for level in payload["levels"]:
                    rows.append({"model": model, "batching": batching, "workers": w,
                                 "concurrency": level["concurrency"], "throughput_rps": level["throughput_rps"],
                                 "p50_ms": level["latency"]["p50_ms"], "p99_ms": level["latency"]["p99_ms"],
                                 "ok": level["ok"], "errors": level["errors"]})
                print(markdown(rows[-len(CONCURRENCY):], header=not rows[:-len(CONCURRENCY)]), flush=True)
    table = markdown(rows) + "\n\n" + verdicts(rows)
    print(table)
    if out:
        write_rows(rows, table, out, "batching")
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = ["| model | batching | workers | concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | errors |",
             "|---|---|---:|---:|---:|---:|---:|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['model']} | {r['batching']} | {r['workers']} | {r['concurrency']} | "
                     f"{r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors'] or 0} |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> str:
    """The issue's three checks, as measured ratios (1 worker); "eager" rows are shown beside "on"."""
    def get(model, batching, c, w=1):
        return next((r for r in rows if (r["model"], r["batching"], r["concurrency"], r["workers"])
                     == (model, batching, c, w)), None)

    out = []
    for model in sorted({r["model"] for r in rows}):
        off32, off1 = get(model, "off", 32), get(model, "off", 1)
        for mode in ("on", "eager"):
            on32, on1 = get(model, mode, 32), get(model, mode, 1)
            if on32 and off32:
                out.append(f"- {model}: throughput at concurrency 32, batching {mode} / off = "
                           f"{on32['throughput_rps'] / off32['throughput_rps']:.2f}x")
            if on1 and off1:
                bound = off1["p50_ms"] + QUEUE_DELAY_US / 1000
                out.append(f"- {model}: p50 at concurrency 1, batching {mode} = {on1['p50_ms']:.2f} ms vs off + "
                           f"queue delay = {bound:.2f} ms (ratio {on1['p50_ms'] / bound:.2f}; the bound allows 1.10)")
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench batching``."""
    p.add_argument("--out", type=Path, help="directory for batching.json and .md (default: print only)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level (default 8)")
    p.add_argument("--models", type=arguments.name_list, default=list(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    p.add_argument("--workers", type=arguments.int_list, default=[1, 2],
                   help="server worker processes to try, comma-separated (default 1,2)")
    p.add_argument("--quick", action="store_true", help="mlp_small only, 1 s per level, 1 worker")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench batching``: 2 on an unknown model name."""
    models, duration, workers = args.models, args.duration, args.workers
    if args.quick:
        models, duration, workers = ["mlp_small"], 1.0, [1]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        print(f"tensorwire bench batching: unknown model(s) {unknown}; choose from {list(MODELS)}", file=sys.stderr)
        return 2
    run_batching(args.out, duration, models, workers)
    return 0
