"""The ``attest`` parser loads one sub-command module, and its command table tells the truth."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

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


HEAVY = ("fastapi", "httpx", "pydantic", "psycopg", "tpm2_pytss", "uvicorn", "starlette")
FIX = "tests/unit/fixtures/tpm2tools-quote"


def _imported_by(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from attest.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES"))
    return set(line.split()[1:])


def test_quote_verify_loads_no_server_http_or_tpm_library() -> None:
    argv = ["quote", "verify", "--ak", f"{FIX}/ak.pem", "-m", f"{FIX}/quote.msg"]
    argv += ["-s", f"{FIX}/quote.sig", "-f", f"{FIX}/quote.pcrs", "--nonce", "c0ffee" * 8]
    loaded = _imported_by(argv)
    assert "attest" in loaded and not loaded & set(HEAVY)


def test_eventlog_replay_loads_no_server_http_or_tpm_library(shared_dir: Path) -> None:
    log = shared_dir / "eventlogs" / "ovmf__q35-direct-boot.bin"
    loaded = _imported_by(["eventlog", "replay", str(log), "--json"])
    assert "attest" in loaded and not loaded & set(HEAVY)
