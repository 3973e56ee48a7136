from __future__ import annotations

import json

import pytest

from attest.cli import main
from attest.cli._common import EXIT_FORMAT
from attest.eventlog import diff_logs, parse_event_log
from conftest import corpus_dir, read_log, yaml_pcrs


def test_diff_names_the_changed_boot_application() -> None:
    a = parse_event_log(read_log("goattest__ubuntu_2104_shielded_vm_no_secure_boot_eventlog"))
    b = parse_event_log(read_log("tpm2tools__event-gce-ubuntu-2104-log"))
    lines = [d.explanation for d in diff_logs(a, b)]
    assert "PCR 4: boot application \\EFI\\ubuntu\\shimx64.efi changed" in lines
    assert "PCR 7: variable dbx changed" in lines


def test_diff_of_a_log_with_itself_is_empty() -> None:
    a = parse_event_log(read_log("tpm2tools__event-bootorder"))
    assert diff_logs(a, a) == ()


def test_cli_replay_json_equals_tpm2_tools(capsys: pytest.CaptureFixture[str]) -> None:
    f = corpus_dir() / "tpm2tools__event-moklisttrusted.bin"
    assert main(["eventlog", "replay", str(f), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == yaml_pcrs(corpus_dir() / "expected" / "raw" / f"{f.stem}.yaml")


def test_cli_show_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    f = corpus_dir() / "ovmf__q35-direct-boot.bin"
    assert main(["eventlog", "show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "Calling EFI Application from Boot Option" in out and "EV_EVENT_TAG" in out
    assert main(["eventlog", "show", str(f), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["events"]) == 26 and doc["events"][4]["meaning"] == "SecureBoot = 0"


def test_cli_facts_json_marks_unverified(capsys: pytest.CaptureFixture[str]) -> None:
    f = corpus_dir() / "tpm2tools__event-sd-boot-fedora37.bin"
    assert main(["eventlog", "facts", str(f), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified_against_quote"] is False and "verity_root_hashes" in doc


def test_cli_diff_human(capsys: pytest.CaptureFixture[str]) -> None:
    a = corpus_dir() / "goattest__ubuntu_2104_shielded_vm_no_secure_boot_eventlog.bin"
    b = corpus_dir() / "tpm2tools__event-gce-ubuntu-2104-log.bin"
    assert main(["eventlog", "diff", str(a), str(b)]) == 0
    assert "PCR 4: boot application" in capsys.readouterr().out


def test_cli_malformed_log_exits_with_format_code(
    tmp_path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(read_log("tpm2tools__event-bootorder")[:-5])
    assert main(["eventlog", "replay", str(bad)]) == EXIT_FORMAT
    assert "malformed input" in capsys.readouterr().err
