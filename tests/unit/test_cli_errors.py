"""Every failure a user can cause ends as one line on stderr with a documented exit code --
never a traceback (issue 15, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attest.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_text("garbage\n")
    return str(path)


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("attest: "), err
    return err


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["verify", "not-a-url", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "ftp://node/", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", "{g}"], 2, "--ear-key: {g}"),
        (["verify", "http://127.0.0.1:9", "--ek-ca", "{g}"], 3, "{g}"),
        (
            [
                "verify",
                "http://127.0.0.1:9",
                "--tofu",
                "--client-cert",
                "{g}",
                "--client-key",
                "{g}",
            ],
            2,
            "--client-cert: {g}",
        ),
        (["verify", "http://127.0.0.1:9", "--tofu", "--policy", "{g}"], 2, "--policy: {g}"),
        (["verify", "http://127.0.0.1:9", "--tofu", "--root", "{g}", "--snapshot", "{g}"], 3, ""),
        (["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", "/nonexistent/k.pem"], 6, ""),
    ],
)
def test_bad_input_is_one_line_and_a_documented_exit_code(
    argv: list[str],
    code: int,
    says: str,
    garbage: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [a.replace("{g}", garbage) for a in argv] + ["--state", str(tmp_path / "state")]
    assert main(args) == code
    assert says.replace("{g}", garbage) in one_line(capsys)


def test_unexpected_errors_are_one_line_with_their_own_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import attest.cli.eventlog as eventlog

    def boom(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(eventlog, "cmd_show", boom)
    assert main(["eventlog", "show", "x"]) == 70
    assert "unexpected error (ZeroDivisionError): a bug" in one_line(capsys)


def test_fleet_refuses_a_non_boolean_or_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    monkeypatch.setenv("ATTEST_FLEET_TOFU", "enabled")
    assert main(["fleet", "add", "http://127.0.0.1:9", "--db", db]) == 2
    assert "ATTEST_FLEET_TOFU" in one_line(capsys)
    monkeypatch.delenv("ATTEST_FLEET_TOFU")
    monkeypatch.setenv("ATTEST_FLEET_TOFUU", "1")
    assert main(["fleet", "ls", "--db", db]) == 2
    assert "ATTEST_FLEET_TOFUU" in one_line(capsys)


def _attest(args: list[str], stdout: int | object) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "attest", *args], stdout=stdout, stderr=subprocess.PIPE, env=env
    )


def test_a_reader_that_went_away_stops_attest_quietly(tmp_path: Path) -> None:
    """``attest ... | head``: the reader closes the pipe; attest stops without an error line,
    with the status of a tool stopped by SIGPIPE (141), as ``cat`` would."""
    proc = _attest(
        ["manifest", "keygen", "--type", "ed25519", "--out", str(tmp_path / "k")], subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before attest writes anything: its first write finds no reader
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == b"", err


def test_a_full_stdout_is_still_an_error_line(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc = _attest(
            ["manifest", "keygen", "--type", "ed25519", "--out", str(tmp_path / "k")], full
        )
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 6
    assert err.decode() == "attest: cannot access: No space left on device\n"
