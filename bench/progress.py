"""A progress bar for long runs (tqdm when installed and stderr is a terminal), a silent stand-in otherwise."""

from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, enabled: bool = True, unit: str = "job") -> Any:
    """tqdm bar on stderr; ``disable=None`` lets tqdm stay quiet when stderr is not a terminal (CI logs)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=None)
