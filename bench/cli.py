"""`tensorwire bench compare | load | overhead | codec | fastpath | batching | alignment | memory`: the
parsers, and the glue from arguments to settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive rates, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _shapes(items: list[str]) -> dict[str, list[int]]:
    from tensorwire.bench.load import parse_shape

    out = {}
    for text in items:
        name, sep, shape = text.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {text!r}: expected NAME:1x3x224x224")
        out[name] = parse_shape(shape)
    return out


def _int_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LOW..HIGH, got {text!r}")
    return int(low), int(high)


def add_parser(subparsers) -> None:
    """Add ``bench`` and its sub-subcommands to the ``tensorwire`` command."""
    p = subparsers.add_parser("bench", help="benchmarks: engines compared, load tests, server overhead",
                              description="Benchmarks whose output is JSON, a markdown table and PNG plots.")
    sub = p.add_subparsers(dest="bench_command", required=True)
    _add_compare(sub)
    _add_load(sub)
    _add_overhead(sub)
    _add_module_commands(sub)


# Benchmarks that are modules with their own argparse main(argv); `tensorwire bench NAME ...` forwards to them.
MODULE_COMMANDS = {
    "codec": ("tensorwire.bench.codec", "decode/encode time: Cython extension vs pure-Python twin vs protobuf"),
    "fastpath": ("tensorwire.bench.fastpath_e2e", "server with the extension vs the twin vs a bare grpcio echo"),
    "batching": ("tensorwire.bench.batching", "dynamic batching off/on/eager x 1 and 2 workers under load"),
    "alignment": ("tensorwire.bench.alignment", "ONNX Runtime on aligned vs misaligned input views"),
    "memory": ("tensorwire.bench.memory", "peak server memory per hostile request vs a bare grpcio receive"),
}


def _add_module_commands(sub) -> None:
    for name, (module, help_text) in MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False, description=help_text)
        # Everything after the name goes to the module's own parser (tensorwire.cli passes it as args.extra).
        p.set_defaults(accepts_extra=True, func=lambda args, module=module: _run_module(module, args.extra))


def _run_module(module: str, argv: list[str]) -> int:
    import importlib

    main = importlib.import_module(module).main
    return int(main(argv) or 0)


def _add_compare(sub) -> None:
    from tensorwire.bench.engines import COMPILE_MODES

    p = sub.add_parser("compare", help="eager PyTorch vs torch.compile vs ONNX Runtime, per model and batch",
                       description="Each engine runs in its own process with the same thread count; medians, "
                                   "p90/p99, throughput, peak memory, speedup vs eager and parity vs eager.")
    p.add_argument("--models", type=_names, default=["mlp"],
                   help="comma-separated: mlp, resnet50, distilbert, bert, vit, or path/to/file.py:factory")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DTYPE[:LOW..HIGH]",
                   help="an input of a file.py:factory model (repeatable; its first dim becomes --batch)")
    p.add_argument("--batch", type=_ints, default=[1, 8], help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--size", choices=("small", "full"), default="full", help="built-in size (default full)")
    p.add_argument("--seq", type=int, default=None, help="sequence length for bert/distilbert (default 128 full)")
    p.add_argument("--engines", type=_names, default=None,
                   help="subset of eager,compile,ort,ort-iobinding,ort-cuda,ort-cuda-iobinding,ort-tensorrt "
                        "(default: all available here)")
    p.add_argument("--compile-mode", dest="compile_modes", type=_names, default=["default"],
                   help=f"torch.compile modes, comma-separated, one engine each ({', '.join(COMPILE_MODES)})")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (default: usable cores)")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity tolerance vs eager (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance vs eager (default 1e-4)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls at least (default 3)")
    p.add_argument("--max-time", type=float, default=None, help="seconds of timed calls at most (default 20)")
    p.add_argument("--engine-timeout", type=float, default=1200.0,
                   help="seconds before an engine's process is killed and recorded as timed out (default 1200)")
    p.add_argument("--workdir", type=Path, default=None, help="keep exported models and logs here")
    p.add_argument("--out", type=Path, required=True, help="directory for compare.json, compare.md, PNG")
    p.add_argument("--quick", action="store_true", help="small models, few iterations (CI)")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from tensorwire.bench.compare import CompareSettings, quick_settings, run_compare
    from tensorwire.bench.engines import COMPILE_MODES, available_engines
    from tensorwire.bench.report import compare_markdown

    bad = [m for m in args.compile_modes if m not in COMPILE_MODES]
    if bad:
        print(f"tensorwire bench compare: unknown compile mode(s) {bad}; choose from {COMPILE_MODES}",
              file=sys.stderr)
        return 2
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


def _add_load(sub) -> None:
    p = sub.add_parser("load", help="load-test any KServe v2 gRPC endpoint (closed and open loop)",
                       description="Worker processes send pre-encoded ModelInfer requests; closed loop at each "
                                   "concurrency, open loop at each --rate with latency from the intended send time.")
    p.add_argument("--target", required=True, help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("--concurrency", type=_ints, default=None,
                   help="closed-loop concurrencies, comma-separated (default 1,8,32 unless only --rate is given)")
    p.add_argument("--rate", type=_floats, default=[], help="open-loop request rates per second, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    p.add_argument("--requests", type=int, default=None, help="at most this many requests per level")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per level, not measured (default 1)")
    p.add_argument("--processes", type=int, default=0, help="worker processes at most (default: usable cores)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds (default 30)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224",
                   help="shape of an input whose metadata has -1 dims (repeatable; default 1 for each -1)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DATATYPE",
                   help="describe the inputs yourself instead of asking ModelMetadata (repeatable)")
    p.add_argument("--data", type=Path, default=None, help=".npz with one array per input name (real data)")
    p.add_argument("--int-range", type=_int_range, default=(0, 1), help="random integer inputs in LOW..HIGH "
                   "(default 0..1: valid ids, masks and type ids)")
    p.add_argument("--out", type=Path, default=None, help="directory for load.json, load.md and PNG plots")
    p.add_argument("--quick", action="store_true", help="1 s per level, short warm-up (CI)")
    p.set_defaults(func=_run_load)


def _run_load(args: argparse.Namespace) -> int:
    from tensorwire.bench.load import LoadSettings, quick_settings, run_load
    from tensorwire.bench.report import load_markdown

    try:
        s = LoadSettings(target=args.target, model=args.model, out=args.out, version=args.model_version,
                         concurrency=args.concurrency or [], rates=args.rate, duration_s=args.duration,
                         max_requests=args.requests, warmup_s=args.warmup, processes=args.processes,
                         timeout_s=args.timeout, shapes=_shapes(args.shape), inputs=args.inputs, data=args.data,
                         int_range=args.int_range)
        if args.quick:
            quick_settings(s)
        payload = run_load(s)
    except (ValueError, RuntimeError) as exc:
        print(f"tensorwire bench load: {exc}", file=sys.stderr)
        return 2
    print(load_markdown(payload))
    if args.out:
        print(f"written: {args.out}/load.json, load.md, load_throughput_p99.png, load_latency_cdf.png")
    return 0 if all(not lv["errors"] for lv in payload["levels"]) else 1


def _add_overhead(sub) -> None:
    p = sub.add_parser("overhead", help="the server's overhead per request: in-process vs over gRPC vs echo",
                       description="The same model in-process (ONNX Runtime) and served by tensorwire on loopback, "
                                   "beside a bare grpcio echo of the same bytes.")
    p.add_argument("--model", default="mlp", help="model name: a built-in to export, or one in --repository")
    p.add_argument("--repository", type=Path, default=None, help="model repository holding --model "
                   "(default: export the built-in to a temporary one)")
    p.add_argument("--size", choices=("small", "full"), default="small", help="built-in size (default small)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:SHAPE", help="input shape (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="ORT threads, in-process and in the server")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--fastpath", choices=("auto", "ext", "twin"), default="auto")
    p.add_argument("--out", type=Path, default=None, help="directory for overhead.json, overhead.md, overhead.png")
    p.add_argument("--quick", action="store_true", help="2 short rounds (CI)")
    p.set_defaults(func=_run_overhead)


def _run_overhead(args: argparse.Namespace) -> int:
    from tensorwire.bench.overhead import OverheadSettings, quick_settings, run_overhead
    from tensorwire.bench.report import overhead_markdown

    try:
        s = OverheadSettings(model=args.model, out=args.out, repository=args.repository, size=args.size,
                             batch=args.batch, shapes=_shapes(args.shape), threads=args.threads, rounds=args.rounds,
                             fastpath=args.fastpath)
        if args.quick:
            quick_settings(s)
        payload = run_overhead(s)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"tensorwire bench overhead: {exc}", file=sys.stderr)
        return 2
    print(overhead_markdown(payload))
    return 0 if payload["parity_ok"] else 1
