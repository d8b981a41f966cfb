"""Every flag of every subcommand explains itself in ``--help`` and shows its default.

A user's first contact with a flag is ``--help``: a flag without a description sends them to the source,
a default that is not shown makes them guess what happens when they leave it out. The walk covers the
parser ``tensorwire`` really runs (``tensorwire.cli.build_parser``), so a new flag anywhere is checked.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from tensorwire.cli import build_parser

# Flags whose default needs no words: a switch is off unless given; a required flag has none.
NO_DEFAULT_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                      argparse._CountAction)
EXEMPT = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
DEFAULT_SHOWN = re.compile(r"default|%\(default\)", re.IGNORECASE)


def _parsers(parser: argparse.ArgumentParser, path: str = "tensorwire"):
    """(command path, parser) for the parser and every subcommand below it, each once."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _parsers(sub, f"{path} {name}")


PARSERS = dict(_parsers(build_parser()))


def _flag(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or action.dest


def _problems(path: str, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for action in parser._actions:
        if isinstance(action, EXEMPT):
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{path} {_flag(action)}: no help text")
        elif not (isinstance(action, NO_DEFAULT_ACTIONS) or action.required or not action.option_strings
                  or DEFAULT_SHOWN.search(action.help)):
            problems.append(f"{path} {_flag(action)}: help does not show the default ({action.default!r})")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            problems += [f"{path} {c.dest}: subcommand without help" for c in action._choices_actions if not c.help]
    return problems


def test_the_walk_reaches_every_subcommand():
    """The walk itself: it finds the nested bench commands and each one's flags (else the checks are vacuous)."""
    assert {"tensorwire serve", "tensorwire demo", "tensorwire export", "tensorwire bench compare",
            "tensorwire bench load", "tensorwire bench report"} <= set(PARSERS)
    assert any(a.option_strings == ["--models"] for a in PARSERS["tensorwire bench compare"]._actions)


def test_the_check_catches_a_bare_flag():
    p = argparse.ArgumentParser()
    p.add_argument("--bare", default=3)
    p.add_argument("--no-default-shown", default=3, help="a number")
    p.add_argument("--fine", default=3, help="a number (default 3)")
    p.add_argument("--switch", action="store_true", help="turn it on")
    assert _problems("probe", p) == ["probe --bare: no help text",
                                     "probe --no-default-shown: help does not show the default (3)"]


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_flag_has_help_and_shows_its_default(path):
    assert _problems(path, PARSERS[path]) == []


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_help_shows_no_raw_markup(path):
    """Descriptions come from docstrings written in reST; argparse prints them as they are."""
    text = PARSERS[path].format_help()
    assert "``" not in text and ":class:" not in text and ":func:" not in text, text


def test_top_level_help_from_the_installed_command():
    out = subprocess.run([sys.executable, "-m", "tensorwire", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "``" not in out.stdout and "serve" in out.stdout and "bench" in out.stdout


def _option(path: str, flag: str) -> argparse.Action:
    return next(a for a in PARSERS[path]._actions if flag in a.option_strings)


def test_shared_choices_come_from_one_table():
    """Codec choices and built-in model names are read from their one source, not restated in parsers."""
    from tensorwire.export import BUILTIN_NAMES
    from tensorwire.fastpath import CODEC_CHOICES

    for path in ("tensorwire demo", "tensorwire bench overhead"):
        assert tuple(_option(path, "--fastpath").choices) == CODEC_CHOICES, path
    for path, flag in (("tensorwire bench compare", "--models"), ("tensorwire bench overhead", "--model")):
        assert all(name in _option(path, flag).help for name in BUILTIN_NAMES), path
