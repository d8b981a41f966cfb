"""The ``tensorwire`` command: export, serve, demo, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tensorwire import __version__
from tensorwire.fastpath import CODEC_CHOICES

# Plain text: argparse prints it as is, so the module docstring's reST markup would show.
DESCRIPTION = ("Export a PyTorch model to an optimized ONNX model repository, serve it over KServe v2 gRPC, "
               "and benchmark it.")


def _add_serve(sub) -> None:
    from tensorwire.server.settings import DEFAULT_MAX_MESSAGE_BYTES

    p = sub.add_parser("serve", help="serve a model repository over KServe v2 gRPC")
    p.add_argument("--model-repository", required=True, type=Path, help="Triton-layout model repository")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--grpc-port", type=int, default=8001, help="port (default 8001; 0 picks a free one)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port via SO_REUSEPORT, each with its own sessions (default 1)")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                   help="largest request and response in MiB (default 64: a batch of 64 3x224x224 FP32 images)")
    p.add_argument("--handler-threads", type=int, default=64,
                   help="threads running RPC handlers; bounds requests waiting in batcher queues (default 64)")
    p.add_argument("--max-queue-size", type=int, default=1024,
                   help="requests a dynamic batcher queues before RESOURCE_EXHAUSTED, unless the model's "
                   "config sets dynamic_batching.default_queue_policy.max_queue_size (default 1024)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=1024,
                   help="RPCs admitted at once; more get RESOURCE_EXHAUSTED (default 1024)")
    p.add_argument("--fastpath", choices=["auto", "ext", "twin"], default=None,
                   help="wire codec: Cython extension, pure-Python twin, or auto (default; env TENSORWIRE_FASTPATH)")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="load only these models at startup (repeatable; default: all)")
    p.add_argument("--providers", default="", help="execution providers in order, e.g. tensorrt,cuda,cpu "
                   "(default: each model's config, else TensorRT -> CUDA -> CPU as available)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="ORT intra-op threads per session (0: auto: one per core, or 1 for a small model "
                   "that runs faster on one, timed at load)")
    p.add_argument("--inter-op-threads", type=int, default=0, help="ORT inter-op threads per session (0: auto)")
    p.add_argument("--no-intra-op-spinning", action="store_true",
                   help="ORT intra-op threads sleep instead of spin-waiting between runs (frees cores for gRPC)")
    p.add_argument("--cpu-affinity", default="", metavar="CPUS",
                   help="pin the server to these CPUs, e.g. 1 or 0,2-3 (with --workers, each worker gets its own "
                   "slice when there are enough); default: no pinning")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc malloc's thresholds alone (by default they are raised so large requests "
                   "reuse memory instead of page-faulting it in)")
    p.add_argument("--default-max-batch-size", type=int, default=4,
                   help="max_batch_size for models without one in config.pbtxt whose graph batches (default 4)")
    p.add_argument("--no-strict-readiness", action="store_true",
                   help="report ready even if some model failed to load at startup")
    p.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds in-flight RPCs get on SIGTERM")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from tensorwire.errors import RuntimeMissing
    from tensorwire.server.affinity import check_cpus, parse_cpu_list
    from tensorwire.server.app import serve
    from tensorwire.server.onnx_model import import_onnxruntime
    from tensorwire.server.settings import ServerSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import_onnxruntime()
    except RuntimeMissing as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2
    max_bytes = int(args.max_message_mb * 2**20)
    try:
        cpus = parse_cpu_list(args.cpu_affinity) if args.cpu_affinity else []
        check_cpus(cpus)
    except ValueError as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        port_file=args.port_file,
        max_receive_message_bytes=max_bytes,
        max_send_message_bytes=max_bytes,
        handler_threads=args.handler_threads,
        max_queue_size=args.max_queue_size,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        fastpath=args.fastpath or "",
        load_models=args.load_model,
        providers=[p for p in args.providers.split(",") if p],
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        intra_op_spinning=not args.no_intra_op_spinning,
        malloc_tuning=not args.no_malloc_tuning,
        cpu_affinity=cpus,
        default_max_batch_size=args.default_max_batch_size,
        strict_readiness=not args.no_strict_readiness,
        shutdown_grace_s=args.shutdown_grace,
        log_level=args.log_level,
        workers=max(1, args.workers),
    )
    try:
        return serve(settings)
    except FileNotFoundError as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="export the built-in MLP, serve it, call it, print results and latency")
    p.add_argument("--model-repository", "--repository", type=Path, default=Path("model_repository"),
                   help="model repository to write, the same one serve reads (default ./model_repository)")
    p.add_argument("--requests", type=int, default=200, help="requests for the latency figures (default 200)")
    p.add_argument("--fastpath", choices=CODEC_CHOICES, default="auto",
                   help="the server's wire codec: Cython extension, pure-Python twin, or auto (default auto)")
    p.set_defaults(func=lambda args: _lazy("tensorwire.demo", "run")(args))


def _add_plugin(sub, module: str) -> None:
    """Subcommands whose parsers live beside their code (export/cli.py, bench/cli.py)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        importlib.import_module(module).add_parser(sub)


def _lazy(module: str, attr: str):
    import importlib

    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorwire", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tensorwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_plugin(sub, "tensorwire.export.cli")
    _add_serve(sub)
    _add_demo(sub)
    _add_plugin(sub, "tensorwire.bench.cli")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
