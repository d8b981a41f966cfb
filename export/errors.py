"""The one error type every export failure raises, and the check for the optional export dependencies."""

from __future__ import annotations

import importlib
from typing import Any

from tensorwire.errors import TensorwireError

INSTALL_HINT = 'pip install "tensorwire[export]"'


class ExportError(TensorwireError):
    """An export that cannot produce a graph we can vouch for; the message says why and what to do.

    ``report`` holds the partial :class:`~tensorwire.export.report.ExportReport` when the failure came
    after some steps ran (a parity failure keeps its numbers there), else ``None``.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def require(module: str) -> Any:
    """Import an export-only dependency, or fail with the install command instead of a bare ImportError.

    The serving host installs tensorwire without torch; only the export path needs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"tensorwire.export needs '{module.split('.')[0]}', which is not installed here "
            f"({exc}). Install the export extra: {INSTALL_HINT}"
        ) from exc
