"""`tensorwire bench compare`: eager PyTorch vs torch.compile vs ONNX Runtime, per model and batch size.

The parent only plans and collects: each model is prepared (built, exported, inputs and eager's
reference outputs written) in one child process, then every (engine, batch) is measured in a child of
its own with the same thread count. Speedups are against eager from the same run, because absolute
times only mean something on one machine at one moment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tensorwire.bench import arguments, machine
from tensorwire.bench.engines import MEMORY_METHOD, available_engines
from tensorwire.bench.prepare import parse_model
from tensorwire.bench.progress import progress_bar
from tensorwire.bench.timing import LoopSettings
from tensorwire.server.affinity import usable_cpus


@dataclass
class CompareSettings:
    models: list[str]
    batches: list[int]
    out: Path
    engines: list[str] | None = None          # None: every engine available here
    compile_modes: list[str] = field(default_factory=lambda: ["default"])
    threads: int = 0                          # 0: the usable cores
    size: str = "full"
    seq: int | None = None
    inputs: list[str] = field(default_factory=list)   # --input specs for file.py:factory models
    rtol: float = 1e-3
    atol: float = 1e-4
    loop: LoopSettings = field(default_factory=LoopSettings)
    quick: bool = False
    engine_timeout_s: float = 1200.0
    prepare_timeout_s: float = 1800.0
    workdir: Path | None = None
    keep_workdir: bool = False
    progress: bool = True


def quick_settings(s: CompareSettings) -> CompareSettings:
    """Small models, few iterations: a CI-sized run that still exercises every engine for real."""
    s.quick, s.size, s.loop = True, "small", LoopSettings.quick()
    return s


def _child(module: str, job: dict[str, Any], work: Path, stem: str, timeout_s: float,
           env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -m module job.json result.json`` and return the result (or why there is none)."""
    job_path, result_path, log_path = work / f"{stem}.job.json", work / f"{stem}.result.json", work / f"{stem}.log"
    job_path.write_text(json.dumps(job))
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, str(job_path), str(result_path)], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **env})
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s (killed)", "wall_seconds": timeout_s}
    wall = time.perf_counter() - t0
    if result_path.exists():
        result = json.loads(result_path.read_text())
        result.setdefault("ok", "error" not in result)
    else:
        tail = log_path.read_text(errors="replace")[-1500:]
        result = {"ok": False, "error": f"exit code {proc.returncode}, no result; log tail:\n{tail}"}
    result["wall_seconds"] = wall
    return result


def _env(threads: int, work: Path) -> dict[str, str]:
    """Pin every thread pool the children may start, and keep torch.compile's cache inside this run."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TORCHINDUCTOR_COMPILE_THREADS": n, "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache"),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def add_ratios(results: list[dict[str, Any]]) -> None:
    """speedup_vs_eager = eager median / engine median, for each (model, batch) of this run."""
    eager = {(r["model"], r["batch"]): r["median_ms"] for r in results if r["engine"] == "eager" and r.get("ok")}
    for r in results:
        base = eager.get((r["model"], r["batch"]))
        r["speedup_vs_eager"] = base / r["median_ms"] if r.get("ok") and base and r.get("median_ms") else None


def run_compare(s: CompareSettings, write: Callable[[dict[str, Any], Path], Any] | None = None) -> dict[str, Any]:
    """Measure every model x batch x engine; write JSON/markdown/plots into ``s.out`` as results arrive."""
    from tensorwire.bench import report

    write = write or report.write_compare
    threads = s.threads or usable_cpus()
    engines = s.engines or available_engines(s.compile_modes)
    sources = [parse_model(m, s.inputs, s.size, s.seq) for m in s.models]
    work = Path(s.workdir or tempfile.mkdtemp(prefix="tensorwire-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = _env(threads, work)
    payload: dict[str, Any] = {
        "kind": "compare",
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "settings": {**{k: v for k, v in asdict(s).items() if k not in ("out", "workdir", "loop")},
                     "out": str(s.out), "threads": threads, "engines": engines, "loop": asdict(s.loop),
                     "memory_method": MEMORY_METHOD,
                     "throughput": "items/s = batch x iterations / sum of latencies",
                     "speedup": "eager median / engine median, same run"},
        "models": [],
        "results": [],
    }
    s.out.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(len(sources) * (1 + len(s.batches) * len(engines)), s.progress)
    try:
        for source in sources:
            _measure_model(s, source, payload, work, engines, threads, env, bar, write)
    finally:
        bar.close()
        if not s.keep_workdir and s.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    add_ratios(payload["results"])
    write(payload, s.out)
    return payload


def _measure_model(s: CompareSettings, source: dict, payload: dict[str, Any], work: Path, engines: list[str],
                   threads: int, env: dict, bar, write: Callable) -> None:
    """Export one model in a child process, then run each batch x engine in its own child."""
    name = source["name"]
    bar.set_description(f"{name}: export")
    mwork = work / name
    mwork.mkdir(exist_ok=True)
    job = {"source": source, "batches": s.batches, "threads": threads, "workdir": str(mwork),
           "rtol": s.rtol, "atol": s.atol, "engines": engines}
    manifest = _child("tensorwire.bench.prepare", job, mwork, "prepare", s.prepare_timeout_s, env)
    bar.update(1)
    hidden = ("batches", "traceback", "weights")
    payload["models"].append({k: v for k, v in manifest.items() if k not in hidden})
    if "error" in manifest or "onnx" not in manifest:
        for b in s.batches:
            for e in engines:
                payload["results"].append({"model": name, "batch": b, "engine": e, "ok": False,
                                           "error": f"prepare failed: {manifest.get('error')}"})
        bar.update(len(s.batches) * len(engines))
        return
    for b in s.batches:
        for e in engines:
            bar.set_description(f"{name} b{b} {e}")
            ejob = {"engine": e, "batch": b, "threads": threads, "manifest": manifest, "loop": asdict(s.loop),
                    "rtol": s.rtol, "atol": s.atol, "workdir": str(mwork)}
            result = _child("tensorwire.bench.engines", ejob, mwork, f"{e}-b{b}", s.engine_timeout_s, env)
            result.update(model=name, batch=b, engine=e)
            result.pop("traceback", None)
            payload["results"].append(result)
            add_ratios(payload["results"])
            write(payload, s.out)  # a long run killed midway still leaves what it measured
            bar.update(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench compare``."""
    from tensorwire.bench.engines import COMPILE_MODES

    p.add_argument("--models", type=arguments.name_list, default=["mlp"],
                   help=f"comma-separated built-ins ({', '.join(arguments.builtin_names())}) or "
                   "path/to/file.py:factory (default mlp)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DTYPE[:LOW..HIGH]",
                   help="an input of a file.py:factory model (repeatable; its first dim becomes --batch; default: "
                   "none, built-ins bring their own)")
    p.add_argument("--batch", type=arguments.int_list, default=[1, 8], help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--size", choices=("small", "full"), default="full", help="built-in size (default full)")
    p.add_argument("--seq", type=int, default=None,
                   help="sequence length for bert/distilbert (default: the model's own, 128 at full size)")
    p.add_argument("--engines", type=arguments.name_list, default=None,
                   help="subset of eager,compile,ort,ort-iobinding,ort-cuda,ort-cuda-iobinding,ort-tensorrt "
                        "(default: all available here)")
    p.add_argument("--compile-mode", dest="compile_modes", type=arguments.name_list, default=["default"],
                   help=f"torch.compile modes, comma-separated, one engine each ({', '.join(COMPILE_MODES)}; "
                   "default: default)")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default 0: the usable cores)")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity tolerance vs eager (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance vs eager (default 1e-4)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls at least (default 3)")
    p.add_argument("--max-time", type=float, default=None, help="seconds of timed calls at most (default 20)")
    p.add_argument("--engine-timeout", type=float, default=1200.0,
                   help="seconds before an engine's process is killed and recorded as timed out (default 1200)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep exported models and logs here (default: a temporary directory, removed)")
    p.add_argument("--out", type=Path, required=True, help="directory for compare.json, compare.md, PNG")
    p.add_argument("--quick", action="store_true", help="small models, few iterations (CI)")


def _settings(args: argparse.Namespace) -> CompareSettings:
    s = CompareSettings(models=args.models, batches=args.batch, out=args.out, compile_modes=args.compile_modes,
                        threads=args.threads, size=args.size, seq=args.seq, inputs=args.inputs, rtol=args.rtol,
                        atol=args.atol, engine_timeout_s=args.engine_timeout, workdir=args.workdir,
                        keep_workdir=args.workdir is not None)
    if args.quick:
        quick_settings(s)
    if args.min_time is not None:
        s.loop.min_time_s = args.min_time
    if args.max_time is not None:
        s.loop.max_time_s = args.max_time
    return s


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench compare``: 0 when every engine ran and matched eager, 1 if one did not, 2 on bad flags."""
    from tensorwire.bench.engines import COMPILE_MODES
    from tensorwire.bench.report import compare_markdown

    bad = [m for m in args.compile_modes if m not in COMPILE_MODES]
    if bad:
        print(f"tensorwire bench compare: unknown compile mode(s) {bad}; choose from {COMPILE_MODES}",
              file=sys.stderr)
        return 2
    s = _settings(args)
    if args.engines:
        known = available_engines(args.compile_modes)
        missing = [e for e in args.engines if e not in known]
        if missing:
            print(f"tensorwire bench compare: engine(s) {missing} not available here; available: {known}",
                  file=sys.stderr)
            return 2
        s.engines = args.engines
    try:
        payload = run_compare(s)
    except ValueError as exc:
        print(f"tensorwire bench compare: {exc}", file=sys.stderr)
        return 2
    print(compare_markdown(payload))
    print(f"written: {args.out}/compare.json, compare.md, compare_latency.png")
    return 0 if all(r.get("ok") for r in payload["results"]) else 1
