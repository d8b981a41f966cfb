"""Tests that need a system package (the Go toolchain, Debian's prometheus) the Python environment cannot
install: `make test` installs them when it runs as root (or with sudo), through the .ci scripts. Where they
are still missing the test skips with the reason and the command that installs them; under CI (CI=true)
it fails instead, so nothing the suite is meant to cover can silently go missing there."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_system(what: str, missing: list[str], install: str) -> None:
    """Skip (fail under CI=true) when ``missing`` names anything, saying what is missing and how to install it."""
    if not missing:
        return
    reason = f"{what} missing ({', '.join(missing)}); install with: {install}"
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)
