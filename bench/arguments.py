"""Argument types and shared choices for the ``tensorwire bench`` parsers.

Each benchmark module declares its own flags (``add_arguments``); what several of them parse the same
way lives here, so that a comma-separated list or a model name means the same thing in every one.
"""

from __future__ import annotations

import argparse

from tensorwire.fastpath import CODEC_CHOICES

__all__ = ["CODEC_CHOICES", "builtin_names", "float_list", "int_list", "int_range", "name_list", "shapes"]


def builtin_names() -> tuple[str, ...]:
    """The built-in models, read from export's public name for its one table (importing it needs no torch).

    Imported when a parser is built, not at module level, so that bench/ stays importable on its own.
    """
    from tensorwire.export import BUILTIN_NAMES

    return tuple(BUILTIN_NAMES)


def int_list(text: str) -> list[int]:
    """``1,8,32`` -> [1, 8, 32]; positive integers only."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """``100,500`` -> [100.0, 500.0]; positive numbers only (request rates)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive rates, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """``mlp, bert`` -> ["mlp", "bert"]."""
    return [x.strip() for x in text.split(",") if x.strip()]


def int_range(text: str) -> tuple[int, int]:
    """``0..1000`` -> (0, 1000)."""
    low, sep, high = text.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LOW..HIGH, got {text!r}")
    return int(low), int(high)


def shapes(items: list[str]) -> dict[str, list[int]]:
    """``["mask:1x8"]`` -> {"mask": [1, 8]} (the name may itself hold colons)."""
    from tensorwire.bench.load import parse_shape

    out = {}
    for text in items:
        name, sep, shape = text.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {text!r}: expected NAME:1x3x224x224")
        out[name] = parse_shape(shape)
    return out
