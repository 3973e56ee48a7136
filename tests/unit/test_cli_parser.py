"""The ``attest`` parser loads one sub-command module, and its command table tells the truth."""

from __future__ import annotations

import argparse
import importlib
import os
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


def _commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_only_the_named_command_gets_its_arguments() -> None:
    """With only -v before the command, the other commands get no parser at all."""
    commands = _commands_of(build_parser(["-vv", "quote", "verify", "--help"]))
    assert list(commands) == ["quote"] and commands["quote"]._actions[1:]


@pytest.mark.parametrize("before", [["-h"], ["--he"], ["-v", "--help"], ["-x"]])
def test_help_before_the_command_still_lists_every_command(before: list[str]) -> None:
    """``attest -h quote`` prints the top-level help (argparse acts on -h, or an abbreviation of
    --help, before it reaches the command): every command is there, only quote is loaded."""
    commands = _commands_of(build_parser([*before, "quote", "verify"]))
    assert list(commands) == list(COMMANDS)
    assert commands["quote"]._actions[1:] and len(commands["fleet"]._actions) == 1


HEAVY = ("fastapi", "httpx", "pydantic", "psycopg", "tpm2_pytss", "uvicorn", "starlette")
# What the two commands scripts run most must not load either (issue 18, process start): each
# costs 3-10 ms of a ~100 ms process. logging: the commands log nothing (they set
# logs_nothing, and attest.cli then skips configuring logging); pathlib, shutil: paths are str
# and argparse's formatter takes the width from os; serialization: the PEM AK is read by the
# function that serialization.load_pem_public_key names.
SLOW = ("logging", "pathlib", "shutil", "datetime", "cryptography.hazmat.primitives.serialization")
FIX = "tests/unit/fixtures/tpm2tools-quote"
QUOTE_VERIFY = ["quote", "verify", "--ak", f"{FIX}/ak.pem", "-m", f"{FIX}/quote.msg"]
QUOTE_VERIFY += ["-s", f"{FIX}/quote.sig", "-f", f"{FIX}/quote.pcrs", "--nonce", "c0ffee" * 8]


def _imported_by(argv: list[str]) -> tuple[int, set[str]]:
    """The exit code of ``attest ARGV`` in a fresh interpreter and every module it loaded
    (argparse's exits, ``--help`` and usage errors, included)."""
    code = (
        "import sys\n"
        "from attest.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print('MODULES', rc, ' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES"))
    _, rc, *modules = line.split()
    return int(rc), set(modules)


def _heavy_or_slow(loaded: set[str]) -> set[str]:
    return {m for m in loaded if m.split(".")[0] in HEAVY or m in SLOW}


def test_quote_verify_loads_no_server_http_or_tpm_library() -> None:
    rc, loaded = _imported_by(QUOTE_VERIFY)
    assert rc == 0 and "attest.quote" in loaded
    assert _heavy_or_slow(loaded) == set()


def test_eventlog_replay_loads_no_server_http_or_tpm_library(shared_dir: Path) -> None:
    log = shared_dir / "eventlogs" / "ovmf__q35-direct-boot.bin"
    rc, loaded = _imported_by(["eventlog", "replay", str(log), "--json"])
    assert rc == 0 and "attest.eventlog.replay" in loaded
    assert _heavy_or_slow(loaded) == set()
    # attest.eventlog loads the CEL/IMA, diff and facts modules on first use: replay never
    # uses them.
    assert not loaded & {"attest.eventlog.cel", "attest.eventlog.diff", "attest.eventlog.facts"}


def test_ear_verify_loads_neither_the_appraisal_nor_a_server_library(tmp_path: Path) -> None:
    """A relying party verifying an attestation result needs the EAR format and a signature
    check, not the appraisal (``attest.appraisal`` loads its engine on first use): 240 -> 99 ms
    a process on this machine (2026-12-07)."""
    import time

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from attest.appraisal.ear import EAR_PROFILE, sign_ear, verifier_id

    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {
        "eat_profile": EAR_PROFILE,
        "iat": now,
        "exp": now + 3600,
        "ear.verifier-id": verifier_id(),
        "submods": {"n1": {"ear.status": "affirming"}},
    }
    pem = tmp_path / "ear.pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rc, loaded = _imported_by(["ear", "verify", sign_ear(claims, key), "--key", str(pem)])
    assert rc == 0 and "attest.appraisal.ear" in loaded
    assert {m for m in loaded if m.split(".")[0] in HEAVY} == set()
    assert not loaded & {
        "attest.appraisal.engine",
        "attest.appraisal.checks",
        "attest.appraisal.stages",
    }


def test_fleet_ls_and_show_read_the_store_without_loading_the_service(tmp_path: Path) -> None:
    """``attest fleet ls`` and ``show`` read the fleet's database: neither the service (FastAPI,
    the poller, the webhooks), the enrolling side (HTTP, the verifier's client) nor the pair
    appraisal; ``add`` enrolls without the service. 10,000 nodes: ``ls`` 1.03 -> 0.31 s, ``show``
    0.86 -> 0.15 s (2026-12-07)."""
    db = f"sqlite:///{tmp_path}/fleet.db"
    not_needed = {
        "attest.cli._fleet_service",
        "attest.verifier.fleet.api",
        "attest.verifier.fleet.poller",
        "attest.verifier.fleet.enrollment",
        "attest.verifier.fleet.webhooks",
        "attest.verifier.contact",
        "attest.appraisal.pair",
        "attest.appraisal.engine",
    }
    for argv in (["fleet", "ls", "--json", "--db", db], ["fleet", "show", "n1", "--db", db]):
        rc, loaded = _imported_by(argv)
        assert rc == (0 if argv[1] == "ls" else 2)  # no node n1 in the (new, empty) fleet
        assert "attest.verifier.fleet.store" in loaded
        assert {m for m in loaded if m.split(".")[0] in HEAVY} == set()
        assert not loaded & not_needed
    # add loads the enrolling side, not the service (0.84 -> 0.51 s a process, 2026-12-08)
    rc, loaded = _imported_by(["fleet", "add", "http://127.0.0.1:1", "--db", db])
    assert rc == 2 and "attest.verifier.fleet.enrollment" in loaded
    assert {m.split(".")[0] for m in loaded} & set(HEAVY) == {"httpx"}  # no FastAPI
    service = {"attest.cli._fleet_service", "attest.verifier.fleet.api"}
    assert not loaded & (
        service | {"attest.verifier.fleet.poller", "attest.verifier.fleet.webhooks"}
    )


def test_verify_help_and_usage_errors_load_no_appraisal() -> None:
    """``attest verify --help``, an option argparse refuses and a combination the command
    refuses before any contact need the parser alone: neither the appraisal, the verifier's
    client nor X.509 (0.36 -> 0.04 s a process on this machine, 2026-12-08)."""
    not_needed = {
        "attest.appraisal.engine",
        "attest.cli._verify_common",
        "attest.cli.verify_saved",
        "attest.verifier.client",
        "attest.manifest.verify",
        "cryptography.x509",
    }
    for argv, want in (
        (["verify", "--help"], 0),
        (["verify", "http://127.0.0.1:1", "--pcrs", "zz"], 2),
        (["verify", "http://127.0.0.1:1", "--guest-id", "g"], 2),
    ):
        rc, loaded = _imported_by(argv)
        assert rc == want, argv
        assert {m for m in loaded if m.split(".")[0] in HEAVY} == set(), argv
        assert not loaded & not_needed, (argv, loaded & not_needed)
    # and a contact loads them, when it runs
    rc, loaded = _imported_by(["verify", "http://127.0.0.1:1", "--tofu"])
    assert rc == 12 and not_needed <= loaded


def test_a_pcr_selection_argparse_refuses_says_why() -> None:
    """``--pcrs`` of verify, quote and demo: exit 2 with the selection's own error (argparse
    alone printed "invalid parse value: 'zz'")."""
    for argv, why in (
        (
            ["verify", "http://127.0.0.1:1", "--pcrs", "zz"],
            "PCR selection 'zz' is not BANK:INDICES",
        ),
        (["quote", "create", "--pcrs", "sha256:0+sha256:1"], "bank sha256 selected twice"),
        (["demo", "--pcrs", "sha999:0"], "unknown hash algorithm 'sha999'"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "attest", *argv], capture_output=True, text=True
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert f"error: argument --pcrs: {why}" in done.stderr, done.stderr


def test_eventlog_show_and_diff_still_load_what_they_use(shared_dir: Path) -> None:
    log = str(shared_dir / "eventlogs" / "ovmf__q35-direct-boot.bin")
    rc, loaded = _imported_by(["eventlog", "show", log, "--json"])
    assert rc == 0 and "attest.eventlog.diff" in loaded
    rc, loaded = _imported_by(["eventlog", "diff", log, log])
    assert rc == 0 and "attest.eventlog.diff" in loaded


def _root_logger_after(argv: list[str]) -> str:
    """``attest ARGV`` in a fresh interpreter, then: exit code, root logger level, handlers."""
    code = (
        "import logging, sys\n"
        "from attest.cli import main\n"
        f"rc = main({argv!r})\n"
        "root = logging.getLogger()\n"
        "print('ROOT', rc, logging.getLevelName(root.level), len(root.handlers))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return next(x for x in done.stdout.splitlines() if x.startswith("ROOT"))


def test_a_command_that_may_log_still_gets_logging_configured() -> None:
    """The shortcut is opt-in per command: ``eventlog show`` does not set logs_nothing, so the
    root logger is configured as before (level ERROR, the one handler); the input is not an
    event log (exit 3), which does not matter here."""
    assert _root_logger_after(["eventlog", "show", f"{FIX}/quote.msg"]) == "ROOT 3 ERROR 1"


def test_verbose_quote_verify_configures_logging() -> None:
    assert _root_logger_after(["-v", *QUOTE_VERIFY]) == "ROOT 0 INFO 1"


def test_the_pem_ak_loads_as_serialization_loads_it() -> None:
    from cryptography.hazmat.primitives import serialization

    from attest.cli.quote import _load_pem_public_key

    pem = Path(FIX, "ak.pem").read_bytes()
    ours, theirs = _load_pem_public_key(pem), serialization.load_pem_public_key(pem)
    assert ours == theirs
    with pytest.raises(ValueError):
        _load_pem_public_key(pem.replace(b"MFkw", b"MFkx"))


def _help_at(columns: int) -> list[str]:
    code = (
        "import sys\n"
        "from attest.cli import build_parser\n"
        "print(build_parser([]).format_help())\n"
        "print('SHUTIL', 'shutil' in sys.modules)\n"
    )
    env = {**os.environ, "COLUMNS": str(columns)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return done.stdout.splitlines()


def test_help_wraps_at_columns_without_importing_shutil() -> None:
    narrow, wide = _help_at(50), _help_at(200)
    assert narrow[-1] == wide[-1] == "SHUTIL False"
    # Description and epilog are printed as written; the commands' help is wrapped to COLUMNS - 2.
    narrow = [x for x in narrow[: narrow.index("exit codes:")] if x.startswith("  ")]
    wide = [x for x in wide[: wide.index("exit codes:")] if x.startswith("  ")]
    assert max(len(x) for x in narrow) <= 48 < max(len(x) for x in wide)
