"""The ``attest`` parser loads one sub-command module, and its command table tells the truth."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from attest.cli import COMMANDS, build_parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_table_matches_the_module_it_names(name: str) -> None:
    module, help_ = COMMANDS[name]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == {name: help_}


def test_help_imports_no_sub_command() -> None:
    code = (
        "import sys; from attest.cli import build_parser; build_parser(['--help']);"
        "print(sorted(m for m in sys.modules if m.startswith('attest.cli.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['attest.cli._common']"


def test_only_the_named_command_gets_its_arguments() -> None:
    parser = build_parser(["-v", "quote", "verify", "--help"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["quote"]._actions[1:]  # quote has its own sub-commands
    assert len(sub.choices["fleet"]._actions) == 1  # only -h: not loaded
