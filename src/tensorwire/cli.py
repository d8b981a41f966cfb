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
    from tensorwire.server.flags import add_arguments

    p = sub.add_parser("serve", help="serve a model repository over KServe v2 gRPC",
                       description="Serve a Triton-layout model repository over KServe v2 / Triton gRPC. "
                       "Every flag's default is shown; docs/serving.md and docs/security.md explain them.")
    add_arguments(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from tensorwire.errors import SettingsError, TensorwireError
    from tensorwire.server.flags import settings_from_args
    from tensorwire.server.logs import configure_logging
    from tensorwire.server.session import import_onnxruntime

    configure_logging(args.log_format, args.log_level)
    try:
        import_onnxruntime()
        settings = settings_from_args(args)
    except (SettingsError, ValueError) as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2
    except TensorwireError as exc:  # ONNX Runtime missing
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2
    try:
        from tensorwire.server.app import serve, serve_worker

        if settings.workers > 1:
            from tensorwire.server.workers import serve_workers

            return serve_workers(settings, serve_worker)
        return serve(settings)
    except FileNotFoundError as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2
    except TensorwireError as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 1


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="load every model of a repository the way serve would; non-zero on a failure",
                       description="Load and warm up every model of a model repository exactly as `tensorwire "
                       "serve` loads them (config, graph, config-vs-graph, one inference); prints a table and "
                       "exits 1 if any model fails, for CI pipelines that ship repositories.")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"), metavar="DIR",
                   help="Triton-layout model repository to check (default: model_repository)")
    p.add_argument("--providers", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=[],
                   metavar="LIST", help="execution providers to try, in order, as serve's --providers "
                   "(default: each model's config, else tensorrt,cuda,cpu as available)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from tensorwire.errors import TensorwireError
    from tensorwire.server.check import run_check
    from tensorwire.server.session import import_onnxruntime

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    try:
        import_onnxruntime()
        return run_check(args.model_repository, args.json, args.providers)
    except (TensorwireError, FileNotFoundError) as exc:
        print(f"tensorwire: {exc}", file=sys.stderr)
        return 2


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="export the built-in MLP, serve it, call it, print results and latency")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"),
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
    _add_check(sub)
    _add_demo(sub)
    _add_plugin(sub, "tensorwire.bench.cli")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
