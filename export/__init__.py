"""PyTorch module -> verified, simplified, optimized ONNX graph in a model repository entry.

``import tensorwire.export`` works without torch (a serving host has none); torch, onnx, onnxsim and
transformers are imported when an export runs, with an install hint if they are missing.
"""

from __future__ import annotations

from typing import Any

from tensorwire.export.builtin import BUILTIN_NAMES, BuiltinModel
from tensorwire.export.errors import INSTALL_HINT, ExportError
from tensorwire.export.report import ExportReport

__all__ = ["ExportError", "ExportReport", "BuiltinModel", "build_builtin", "export_model", "BUILTIN_NAMES",
           "INSTALL_HINT"]


def export_model(model, example_inputs, **kwargs: Any) -> ExportReport:
    """Export ``model``; see :func:`tensorwire.export.pipeline.export_model` for every option."""
    from tensorwire.export.pipeline import export_model as _export

    return _export(model, example_inputs, **kwargs)


def build_builtin(name: str, **overrides: Any) -> BuiltinModel:
    """A built-in architecture with random weights: module, example inputs, names, dynamic axes."""
    from tensorwire.export.builtin import build_builtin as _build

    return _build(name, **overrides)
