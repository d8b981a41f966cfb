"""Dependencies point one way: serving code never imports the benchmarks, and the server's modules hold no cycle.

bench/ sits above everything (it drives servers, exports and clients); if serving code imported it, a
serving host would need the benchmark's code paths and a change to a benchmark could break `serve`.
The walk reads the source (AST) rather than importing it, so it sees function-level imports too, and
it needs none of the optional extras.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"src/tensorwire": "tensorwire", "server": "tensorwire.server", "fastpath": "tensorwire.fastpath",
            "export": "tensorwire.export"}
FORBIDDEN = "tensorwire.bench"
# The one place allowed to name the benchmarks: the top-level CLI's table of subcommands (it is the
# composition root that offers `tensorwire bench`; it imports that parser by name, only when building it).
ALLOWED_NAMES = {("tensorwire.cli", "tensorwire.bench.cli")}
MODULE_NAME = re.compile(r"^tensorwire(\.\w+)+$")
PYX_IMPORT = re.compile(r"^\s*(?:from|c?import)\s+([\w.]+)", re.MULTILINE)


def _module_name(path: Path) -> str:
    for folder, package in PACKAGES.items():
        base = ROOT / folder
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(f"{path} is in none of {list(PACKAGES)}")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of ``from ..x import y`` as written inside ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, at any depth: import statements, and module names given as strings
    (``importlib.import_module("...")``, ``python -m ...`` in a subprocess)."""
    if path.suffix == ".pyx":
        return set(PYX_IMPORT.findall(path.read_text()))
    module = _module_name(path)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value)
              and (module, node.value) not in ALLOWED_NAMES):
            names.add(node.value)
    return names


def serving_sources() -> list[Path]:
    files = [p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".pyx")]
    assert len(files) > 40, files  # the walk found the code (a wrong ROOT would pass vacuously)
    return files


def _is_bench(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def test_no_serving_module_imports_bench():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in imported_names(p) if _is_bench(n))
                 for p in serving_sources()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walk_sees_function_level_relative_and_string_imports(tmp_path, monkeypatch):
    """The checker itself: each way of reaching bench/ that the walk claims to see, it sees."""
    pkg = tmp_path / "server"
    pkg.mkdir()
    source = pkg / "probe.py"
    source.write_text(
        "def f():\n    from tensorwire.bench import stats\n"
        "def g():\n    from ..bench.timing import measure\n"
        "def h():\n    import importlib\n    return importlib.import_module('tensorwire.bench.load')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = imported_names(source)
    assert {"tensorwire.bench.stats", "tensorwire.bench.timing", "tensorwire.bench.load"} <= names
    assert all(_is_bench(n) for n in ("tensorwire.bench", "tensorwire.bench.timing"))
    assert not _is_bench("tensorwire.benchmarks_elsewhere")


@pytest.mark.parametrize(("module", "other"), [("app", "workers"), ("workers", "app")])
def test_server_app_and_workers_do_not_import_each_other(module, other):
    """The worker supervisor starts servers and the server starts workers: a cycle the CLI owns."""
    names = imported_names(ROOT / "server" / f"{module}.py")
    assert f"tensorwire.server.{other}" not in names
