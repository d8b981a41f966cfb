"""`tensorwire bench compare | load | overhead | batching | resilience | memory | cpu | http-servers | triton-perf
| peers | report`.

Every subcommand is built the same way: its module declares its flags (``add_arguments(parser)``) and
turns them into a run (``run(args) -> exit code``); this table only names the modules. Modules keep
their heavy imports (torch, onnx, matplotlib) inside functions, so ``tensorwire --help`` works on a
serving host that has none of them.
"""

from __future__ import annotations

import argparse
import importlib
import re

# name -> (module, one-line help). The module's docstring, first paragraph, is the subcommand's description.
COMMANDS = {
    "compare": ("tensorwire.bench.compare", "eager PyTorch vs torch.compile vs ONNX Runtime, per model and batch"),
    "load": ("tensorwire.bench.load", "load-test any KServe v2 gRPC endpoint (closed and open loop)"),
    "overhead": ("tensorwire.bench.overhead", "the server's overhead per request: in-process vs over gRPC vs echo"),
    "batching": ("tensorwire.bench.batching", "dynamic batching off/on/eager x 1 and 2 workers under load"),
    "resilience": ("tensorwire.bench.resilience", "stalled clients, a killed worker, a metrics flood"),
    "memory": ("tensorwire.bench.memory", "peak server memory per hostile request vs a bare grpcio receive"),
    "cpu": ("tensorwire.bench.cpu", "server CPU per request, unary and streaming, variants beside a grpcio echo"),
    "http-servers": ("tensorwire.bench.http_servers",
                     "the HTTP front end beside gRPC on one server (Python clients, perf_analyzer)"),
    "triton-perf": ("tensorwire.bench.triton_perf", "perf_analyzer: plain gRPC vs system shared memory vs streaming"),
    "peers": ("tensorwire.bench.peers", "perf_analyzer against Triton 2.51 and a 60-line grpcio server, same ORT"),
    "report": ("tensorwire.bench.report", "re-draw the markdown and plots of a saved result JSON"),
}


def _description(module) -> str:
    """The docstring's first paragraph as plain text: argparse would print reST markup as it is."""
    text = (module.__doc__ or "").strip().split("\n\n")[0]
    text = re.sub(r"^`tensorwire bench \w+`: ", "", text)  # the usage line already names the command
    text = re.sub(r":\w+:`([^`]+)`|``([^`]+)``", lambda m: m.group(1) or m.group(2), text)
    return text[:1].upper() + text[1:]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``tensorwire`` command."""
    p = subparsers.add_parser("bench", help="benchmarks: engines compared, load tests, server overhead",
                              description="Benchmarks whose output is JSON, a markdown table and PNG plots.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=_description(module))
        module.add_arguments(command)
        command.set_defaults(func=module.run)
