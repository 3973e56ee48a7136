"""``attest verify URL --evidence FILE --nonce HEX`` without a node: the usage errors (exit 2,
one line) and the answers that need no enrollment (exit 12, live verify's JSON shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attest import cmw
from attest.cli import main

URL = "http://127.0.0.1:9"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "node.cmw.json"
    path.write_bytes(cmw.encode_json(cmw.evidence_record(b'{"version": 1}')))
    return path


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "--evidence needs --nonce HEX"),
        (["--nonce", "zz" * 32], "--nonce is not hex"),
        (["--nonce", "ab" * 8], "--nonce is 8 bytes, not 16-64"),
        (
            ["--nonce", "ab" * 32, "--re-enroll"],
            "--re-enroll cannot be used without a live contact",
        ),
        (["--nonce", "ab" * 32, "--tofu"], "--tofu cannot be used without a live contact"),
        (
            ["--nonce", "ab" * 32, "--operator-socket", "/x"],
            "--operator-socket cannot be used without a live",
        ),
        (
            ["--nonce", "ab" * 32, "--save-evidence", "/x"],
            "--save-evidence cannot be used without a live",
        ),
    ],
)
def test_offline_usage_errors(
    saved: Path, tmp_path: Path, extra: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", URL, "--state", str(tmp_path / "s"), "--evidence", str(saved), *extra])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err


def test_nonce_without_evidence_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", URL, "--state", str(tmp_path / "s"), "--nonce", "ab" * 32])
    assert code == 2
    assert "--nonce goes with --evidence" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'["application/json", "e30", 4]', "not attest evidence"),
        (b"\x81\x00", "malformed evidence file"),
        (b"[" * 100_000, "not well-formed JSON"),
    ],
)
def test_a_file_that_is_not_evidence_could_not_be_appraised(
    tmp_path: Path, content: bytes, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    args = ["verify", URL, "--state", str(tmp_path / "s"), "--json", "--evidence", str(path)]
    code = main([*args, "--nonce", "ab" * 32])
    doc = json.loads(capsys.readouterr().out)
    assert code == 12 and doc["verdict"] == "could-not-appraise"
    assert says in doc["explanation"], doc["explanation"]
    assert doc["result"]["nonce"] == "ab" * 32


def test_a_pair_file_needs_host_and_one_node_file_refuses_host(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = tmp_path / "pair.cmw.json"
    pair.write_bytes(cmw.encode_json(cmw.pair_collection(b"{}", b"{}")))
    base = ["verify", URL, "--state", str(tmp_path / "s"), "--json", "--nonce", "ab" * 32]
    assert main([*base, "--evidence", str(pair)]) == 12
    assert "give --host HOST_URL" in json.loads(capsys.readouterr().out)["explanation"]
    assert main([*base, "--evidence", str(saved), "--host", "http://127.0.0.1:8"]) == 12
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "could-not-appraise" and set(doc["layers"]) == {"host", "guest"}
    assert "not a host+guest pair" in doc["explanation"]


def test_offline_appraisal_without_an_enrollment_could_not_be_appraised(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", URL, "--state", str(tmp_path / "s"), "--json", "--evidence", str(saved)]
    assert main([*args, "--nonce", "ab" * 32]) == 12
    doc = json.loads(capsys.readouterr().out)
    assert "is not enrolled in this verifier's state" in doc["explanation"]
