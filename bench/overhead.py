"""`tensorwire bench overhead`: what serving costs per request, beside what gRPC alone costs.

The same model file three ways, measured in interleaved rounds so a busy machine drifts all three
alike: in-process ONNX Runtime ``session.run`` (the model's own time), tensorwire over loopback gRPC
(a real ``tensorwire serve`` process), and a bare grpcio echo server answering with as many bytes as
tensorwire does (gRPC's floor on this machine). Overhead = served - in-process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorwire.bench import arguments, machine
from tensorwire.bench.load import fetch_inputs, make_inputs
from tensorwire.bench.progress import progress_bar
from tensorwire.bench.stats import summarize
from tensorwire.bench.timing import LoopSettings, cpu_session, measure
from tensorwire.launcher import echo_server, tensorwire_server
from tensorwire.server.affinity import usable_cpus


@dataclass
class OverheadSettings:
    model: str = "mlp"
    out: Path | None = None
    repository: Path | None = None     # None: export the built-in ``model`` to a temporary repository
    size: str = "small"
    batch: int = 1
    shapes: dict[str, list[int]] = field(default_factory=dict)
    threads: int = 0
    rounds: int = 5
    loop: LoopSettings = field(default_factory=lambda: LoopSettings(warmup=50, warmup_time_s=0.5, min_iters=200,
                                                                    min_time_s=1.0, max_time_s=5.0))
    fastpath: str = "auto"
    quick: bool = False
    progress: bool = True


def quick_settings(s: OverheadSettings) -> OverheadSettings:
    s.quick, s.rounds = True, 2
    s.loop = LoopSettings(warmup=10, warmup_time_s=0.0, min_iters=30, min_time_s=0.1, max_time_s=1.0)
    return s


def _export_builtin(name: str, size: str, repository: Path) -> None:
    """The public CLI in a child process: the parent never imports torch."""
    cmd = [sys.executable, "-m", "tensorwire", "export", name, "--size", size, "--model-repository", str(repository)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def model_file(repository: Path, model: str) -> Path:
    """The latest version's model.onnx, as the server's default version policy picks it."""
    versions = sorted((int(p.name) for p in (repository / model).iterdir() if p.name.isdigit()), reverse=True)
    for v in versions:
        f = repository / model / str(v) / "model.onnx"
        if f.exists():
            return f
    raise FileNotFoundError(f"no <version>/model.onnx under {repository / model}")


def _batch_shapes(specs: list[dict[str, Any]], batch: int, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """--batch fills a variable first dim; --shape wins; other variable dims default to 1."""
    out = dict(shapes)
    for spec in specs:
        if spec["name"] not in out and spec["shape"] and spec["shape"][0] == -1:
            out[spec["name"]] = [batch] + [1 if d < 0 else d for d in spec["shape"][1:]]
    return out


def run_overhead(s: OverheadSettings) -> dict[str, Any]:
    """Measure in-process ORT, the served model and the echo floor side by side; write the report."""
    from tensorwire.bench import report

    threads = s.threads or usable_cpus()
    tmp = None
    if s.repository is not None:
        repo = Path(s.repository).resolve()
        if not (repo / s.model).is_dir():
            raise FileNotFoundError(f"--model-repository {repo} has no model '{s.model}' (no directory "
                                    f"{repo / s.model}); leave --model-repository out to export the built-in one")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tensorwire-overhead-")
        repo = Path(tmp.name) / "models"
        _export_builtin(s.model, s.size, repo)
    path = model_file(repo, s.model)
    try:
        measured = _measure(s, repo, path, threads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    payload = _payload(s, measured, threads, str(path) if tmp is None
                       else f"<tmp>/models/{s.model}/{path.parent.name}/model.onnx")
    if s.out:
        report.write_overhead(payload, s.out)
    return payload


def _measure(s: OverheadSettings, repo: Path, path: Path, threads: int) -> dict[str, Any]:
    """Alternating rounds of the three: ORT in this process, the served model, the bare grpcio echo."""
    from tensorwire.client import InferenceClient, decode_response, encode_request

    samples: dict[str, list[float]] = {"in_process": [], "served": [], "echo": []}
    bar = progress_bar(s.rounds, s.progress, unit="round")
    try:
        with tensorwire_server(repo, "--intra-op-threads", str(threads), "--inter-op-threads", "1",
                               "--model-control-mode", "explicit", "--load-model", s.model,
                               "--fastpath", s.fastpath) as server, \
                InferenceClient(server.address, timeout=60) as client:
            _wait_ready(client, server, s.model)
            specs = fetch_inputs(server.address, s.model)
            arrays, _ = make_inputs(specs, _batch_shapes(specs, s.batch, s.shapes))
            inputs = {n: a for n, (_, a) in arrays.items()}
            request = encode_request(s.model, inputs)
            response = client.infer_bytes(request)
            session = cpu_session(path, threads, 1)
            parity_ok = _parity(decode_response(response).outputs, session, inputs)
            with echo_server(len(response)) as echo, InferenceClient(echo.address, timeout=60) as echo_client:
                fns = {"in_process": lambda: session.run(None, inputs),
                       "served": lambda: client.infer_bytes(request),
                       "echo": lambda: echo_client.infer_bytes(request)}
                for _ in range(s.rounds):
                    for key, fn in fns.items():
                        samples[key] += measure(fn, s.loop)
                    bar.update(1)
    finally:
        bar.close()
    return {"samples": samples, "inputs": inputs, "request_bytes": len(request),
            "response_bytes": len(response), "parity_ok": parity_ok}


def _wait_ready(client, server, model: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.model_ready(model):
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {model} not ready:\n{server.log()}")
        time.sleep(0.1)


def _parity(served_out: dict, session, inputs: dict) -> bool:
    local = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return set(local) == set(served_out) and all(
        np.allclose(served_out[k], v, rtol=1e-5, atol=1e-6) for k, v in local.items())


def _payload(s: OverheadSettings, measured: dict[str, Any], threads: int, model_file_shown: str) -> dict[str, Any]:
    """The JSON report: per-path statistics and the overhead of serving over the in-process run."""
    stats = {k: summarize(v) for k, v in measured["samples"].items()}
    inproc, served, floor = (stats[k]["p50_ms"] * 1e3 for k in ("in_process", "served", "echo"))
    return {
        "kind": "overhead",
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "settings": {**{k: v for k, v in asdict(s).items() if k not in ("out", "repository", "loop")},
                     "threads": threads, "loop": asdict(s.loop), "out": str(s.out) if s.out else None,
                     "repository": str(s.repository) if s.repository else "(exported to a temporary directory)"},
        "model_file": model_file_shown,
        "input_shapes": {n: list(a.shape) for n, a in measured["inputs"].items()},
        "request_bytes": measured["request_bytes"],
        "response_bytes": measured["response_bytes"],
        "parity_ok": bool(measured["parity_ok"]),
        **stats,
        "overhead": {
            "overhead_us": served - inproc,
            "overhead_pct": 100.0 * (served - inproc) / inproc if inproc > 0 else float("nan"),
            "overhead_share_pct": 100.0 * (served - inproc) / served if served > 0 else float("nan"),
            "floor_us": floor,
            "above_floor_us": served - inproc - floor,
            "definition": "p50 served - p50 in-process; pct of in-process p50; floor = p50 of the echo",
        },
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench overhead``."""
    p.add_argument("--model", default="mlp", help="model name: a built-in to export "
                   f"({', '.join(arguments.builtin_names())}), or one in --model-repository (default mlp)")
    p.add_argument("--model-repository", type=Path, default=None,
                   help="model repository holding --model (default: export the built-in to a temporary one)")
    p.add_argument("--size", choices=("small", "full"), default="small", help="built-in size (default small)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:SHAPE",
                   help="input shape (repeatable; default: 1 for each -1 dim of the model's metadata)")
    p.add_argument("--threads", type=int, default=0,
                   help="ORT threads, in-process and in the server (default 0: usable cores)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--fastpath", choices=arguments.CODEC_CHOICES, default="auto",
                   help="the server's wire codec (default auto)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for overhead.json, overhead.md, overhead.png (default: print the table only)")
    p.add_argument("--quick", action="store_true", help="2 short rounds (CI)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench overhead``: 0 when the served answer matched in-process, 1 if not, 2 on bad input."""
    from tensorwire.bench.report import overhead_markdown

    try:
        s = OverheadSettings(model=args.model, out=args.out, repository=args.model_repository, size=args.size,
                             batch=args.batch, shapes=arguments.shapes(args.shape), threads=args.threads,
                             rounds=args.rounds, fastpath=args.fastpath)
        if args.quick:
            quick_settings(s)
        payload = run_overhead(s)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"tensorwire bench overhead: {exc}", file=sys.stderr)
        return 2
    print(overhead_markdown(payload))
    return 0 if payload["parity_ok"] else 1
