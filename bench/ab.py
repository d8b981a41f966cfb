"""`tensorwire bench ab`: two installations of tensorwire side by side, for before/after figures.

Each of ``--python-a`` and ``--python-b`` (the interpreters of two virtual environments, e.g. one built from
the previous commit) starts `tensorwire serve` on the same repository (the small MLP and the 3x224x224
image model of ``bench fastpath``); one client sends the same pre-encoded request to each, sequentially,
in alternating rounds, so that the machine's drift hits both alike. Prints p50 and p99 per server and
model and the B/A ratio of the medians of the per-round p50s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from tensorwire.bench.fastpath_e2e import MODELS
from tensorwire.bench.report import write_rows
from tensorwire.bench.stats import percentile_ms
from tensorwire.bench.timing import fixed_count, measure
from tensorwire.client import InferenceClient, encode_request
from tensorwire.launcher import launch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python-a", type=Path, required=True, help="interpreter of installation A (the baseline)")
    p.add_argument("--python-b", type=Path, default=Path(sys.executable),
                   help="interpreter of installation B (default: this one)")
    p.add_argument("--requests", type=int, default=2000, help="requests per round and server (default 2000)")
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tensorwire serve` argument for both servers, repeatable (default: none)")
    p.add_argument("--out", type=Path, default=None, help="directory for ab.json / ab.md (default: none)")


def run(args: argparse.Namespace) -> int:
    import onnx  # here, not at the top: `tensorwire --help` must not need it

    with tempfile.TemporaryDirectory(prefix="tensorwire-ab-") as tmp:
        repo = Path(tmp) / "models"
        for name, (make, _, _) in MODELS.items():
            (repo / name / "1").mkdir(parents=True)
            onnx.save(make(), str(repo / name / "1" / "model.onnx"))
            (repo / name / "config.pbtxt").write_text("max_batch_size: 8\n")
        rows = _compare(args, repo)
    table = _markdown(rows, args)
    print(table)
    if args.out:
        write_rows(rows, table, args.out, "ab")
    return 0


def _serve(python: Path, repo: Path, extra: list[str]):
    return launch(["-m", "tensorwire", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                   "--grpc-port", "0", *_free_metrics_port(python), *extra], python=str(python))


def _free_metrics_port(python: Path) -> list[str]:
    """``--metrics-port 0`` (and ``--http-port 0``) for an installation that has a metrics (HTTP) endpoint: it
    would take 8002 (8000) and collide with the other side; nothing for an older one, which would refuse the
    flag."""
    import subprocess

    help_text = subprocess.run([str(python), "-m", "tensorwire", "serve", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    free = ["--metrics-port", "0"] if "--metrics-port" in help_text else []
    return free + (["--http-port", "0"] if "--http-port" in help_text else [])  # HTTP would take 8000 on both


def _compare(args: argparse.Namespace, repo: Path) -> list[dict]:
    rows = []
    with _serve(args.python_a, repo, args.server_arg) as a, _serve(args.python_b, repo, args.server_arg) as b, \
            InferenceClient(a.address) as ca, InferenceClient(b.address) as cb:
        for name, (_, input_name, shape) in MODELS.items():
            request = encode_request(name, {input_name: np.ones(shape, np.float32)})
            p50s: dict[str, list[float]] = {"a": [], "b": []}
            every: dict[str, list[float]] = {"a": [], "b": []}
            for client in (ca, cb):
                measure(lambda c=client, r=request: c.infer_bytes(r), fixed_count(200, warmup=0))
            for _ in range(args.rounds):
                for key, client in (("a", ca), ("b", cb)):
                    lat = measure(lambda c=client, r=request: c.infer_bytes(r), fixed_count(args.requests, warmup=0))
                    p50s[key].append(percentile_ms(lat, 50))
                    every[key].extend(lat)
            a50, b50 = statistics.median(p50s["a"]), statistics.median(p50s["b"])
            rows.append({"model": name, "a_p50_ms": a50, "b_p50_ms": b50, "b_over_a_p50": b50 / a50,
                         "a_p99_ms": percentile_ms(every["a"], 99), "b_p99_ms": percentile_ms(every["b"], 99),
                         "a_round_p50s_ms": p50s["a"], "b_round_p50s_ms": p50s["b"]})
    return rows


def _markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"A: {args.python_a}  B: {args.python_b}  server arguments: {' '.join(args.server_arg) or '(defaults)'}; "
             f"{args.rounds} alternating rounds of {args.requests} sequential requests", "",
             "| model | A p50 ms | B p50 ms | B / A p50 | A p99 ms | B p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['a_p50_ms']:.3f} | {r['b_p50_ms']:.3f} | {r['b_over_a_p50']:.3f} | "
                     f"{r['a_p99_ms']:.3f} | {r['b_p99_ms']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
