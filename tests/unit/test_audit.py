"""Operator audit log: pseudonymisation, the hash chain, anchoring in the runtime PCR."""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from attest.audit import (
    ZERO_HASH,
    AuditEntry,
    new_entry,
    parse_entry,
    pseudonym,
    verify_audit_chain,
)
from attest.errors import AuditChainError, ConfigError, EventLogFormatError, VerificationError
from attest.model import HashAlg, PcrSelection
from attest.node.logs.audit import AuditLog
from attest.node.logs.runtime import RuntimeLog
from attest.node.tpm.fake import FakeTpm
from attest.runtime import AuditAnchor, AuditUnanchored, verify_runtime_log

KEY = bytes(range(32))
T = "2026-01-02T03:04:05+00:00"
USER = "alice.smith"
HOST = "198.51.100.7"


def chain(n: int) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = ZERO_HASH
    for i in range(n):
        e = new_entry(
            KEY,
            {"event": "login", "user": f"user{i}", "source": HOST, "service": "sshd", "time": T},
            seq=i,
            prev_hash=prev,
        )
        out.append(e)
        prev = e.entry_hash
    return out


def anchors(entries: list[AuditEntry]) -> list[AuditAnchor]:
    return [AuditAnchor(e.seq, e.entry_hash) for e in entries]


def open_logs(tmp_path: Path, tpm: FakeTpm | None = None) -> tuple[FakeTpm, RuntimeLog, AuditLog]:
    tpm = tpm or FakeTpm()
    runtime = RuntimeLog(tmp_path / "runtime.log", tpm)
    audit = AuditLog(tmp_path / "audit.log", tmp_path / "audit.key", runtime)
    return tpm, runtime, audit


def verified_anchors(tpm: FakeTpm, runtime: RuntimeLog) -> tuple[AuditAnchor, ...]:
    q = tpm.read_pcrs(PcrSelection.of({HashAlg.SHA256: [runtime.pcr]}))
    return verify_runtime_log(runtime.records(), q, pcr=runtime.pcr).audit_anchors


# --- pure ------------------------------------------------------------------------------------


def test_identities_are_pseudonymised_never_stored_in_clear() -> None:
    e = new_entry(
        KEY,
        {
            "event": "session-open",
            "user": USER,
            "source": HOST,
            "session": "pts/3",
            "service": "sshd",
            "result": "success",
            "time": T,
        },
        seq=0,
        prev_hash=ZERO_HASH,
    )
    text = json.dumps(e.to_json())
    for secret in (USER, HOST, "pts/3"):
        assert secret not in text
    assert e.operator == pseudonym(KEY, "op", USER) and e.operator.startswith("op:")
    assert e.source is not None and e.source.startswith("host:")
    assert e.session is not None and e.session.startswith("sess:")
    assert len(e.operator) == len("op:") + 32  # truncated to 128 bits


def test_pseudonyms_depend_on_node_key_and_field() -> None:
    assert pseudonym(KEY, "op", USER) == pseudonym(KEY, "op", USER)
    assert pseudonym(KEY, "op", USER) != pseudonym(bytes(32), "op", USER)
    assert pseudonym(KEY, "op", "x")[3:] != pseudonym(KEY, "host", "x")[5:]


def test_malformed_event_error_does_not_echo_identity() -> None:
    with pytest.raises(EventLogFormatError) as info:
        new_entry(
            KEY,
            {"event": "login", "user": USER, "time": T, "nickname": USER},
            seq=0,
            prev_hash=ZERO_HASH,
        )
    assert USER not in str(info.value)
    with pytest.raises(EventLogFormatError) as info:
        new_entry(
            KEY,
            {"event": "login", "user": USER, "service": USER + " x", "time": T},
            seq=0,
            prev_hash=ZERO_HASH,
        )
    assert USER not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"event": "rm -rf", "user": "u", "time": T},
        {"event": "login", "time": T},
        {"event": "login", "user": "u", "time": "yesterday"},
        {"event": "login", "user": "u", "time": "2026-01-02T03:04:05"},  # no offset
        {"event": "login", "user": "u", "time": T, "result": "maybe"},
        {"event": "login", "user": "", "time": T},
    ],
)
def test_refuses_malformed_raw_events(raw: dict[str, Any]) -> None:
    with pytest.raises(EventLogFormatError):
        new_entry(KEY, raw, seq=0, prev_hash=ZERO_HASH)


def test_parse_refuses_clear_identity_in_pseudonym_field() -> None:
    doc = chain(1)[0].to_json()
    doc["operator"] = USER
    with pytest.raises(EventLogFormatError, match="pseudonym"):
        parse_entry(doc)


def test_intact_chain_with_every_entry_anchored_verifies() -> None:
    entries = chain(5)
    assert verify_audit_chain([e.to_json() for e in entries], anchors(entries)) == tuple(entries)


def test_detects_edited_entry() -> None:
    entries = chain(4)
    entries[1] = replace(entries[1], event="logout")
    with pytest.raises(AuditChainError, match="entry 1 was edited"):
        verify_audit_chain(entries, anchors(chain(4)))


def test_detects_edited_entry_with_every_later_hash_recomputed() -> None:
    original = chain(4)
    forged = [original[0]]
    prev = original[0].entry_hash
    for e in original[1:]:
        raw = {
            "event": "logout" if e.seq == 2 else e.event,
            "user": f"user{e.seq}",
            "source": HOST,
            "service": "sshd",
            "time": T,
        }
        forged.append(new_entry(KEY, raw, seq=e.seq, prev_hash=prev))
        prev = forged[-1].entry_hash
    with pytest.raises(AuditChainError, match="does not match its anchor"):
        verify_audit_chain(forged, anchors(original))


def test_detects_deleted_entry_in_the_middle() -> None:
    entries = chain(4)
    with pytest.raises(AuditChainError, match="deleted"):
        verify_audit_chain(entries[:1] + entries[2:], anchors(entries))


def test_detects_truncated_tail() -> None:
    entries = chain(4)
    with pytest.raises(AuditChainError, match="truncated"):
        verify_audit_chain(entries[:2], anchors(entries))


def test_detects_deleted_audit_log() -> None:
    with pytest.raises(AuditChainError, match="deleted or truncated"):
        verify_audit_chain([], anchors(chain(2)))


def test_detects_inserted_unanchored_entry() -> None:
    entries = chain(3)
    extra = new_entry(
        KEY, {"event": "logout", "user": "x", "time": T}, seq=3, prev_hash=entries[-1].entry_hash
    )
    with pytest.raises(AuditChainError, match="not anchored"):
        verify_audit_chain([*entries, extra], anchors(entries))


def test_detects_first_entry_not_starting_chain() -> None:
    entries = chain(2)
    bad = new_entry(KEY, {"event": "login", "user": "x", "time": T}, seq=0, prev_hash=b"\x01" * 32)
    with pytest.raises(AuditChainError, match="start"):
        verify_audit_chain([bad], [AuditAnchor(0, bad.entry_hash)])
    assert entries  # the helper itself starts from zero


def test_checkpoint_anchor_of_head_commits_to_earlier_entries() -> None:
    # A later boot's runtime log anchors the head it found (entry 2), then entry 3.
    entries = chain(4)
    verify_audit_chain(
        entries, [AuditAnchor(2, entries[2].entry_hash), AuditAnchor(3, entries[3].entry_hash)]
    )
    edited = [replace(entries[0], time="2026-01-01T00:00:00+00:00"), *entries[1:]]
    with pytest.raises(AuditChainError):
        verify_audit_chain(edited, [AuditAnchor(3, entries[3].entry_hash)])


def test_conflicting_duplicate_anchors_are_refused() -> None:
    entries = chain(2)
    with pytest.raises(AuditChainError, match="two hashes"):
        verify_audit_chain(entries, [*anchors(entries), AuditAnchor(1, b"\x00" * 32)])


def test_audit_chain_error_is_a_verification_error() -> None:
    assert issubclass(AuditChainError, VerificationError)
    assert AuditChainError.check == "audit-chain"


# --- the store -------------------------------------------------------------------------------


def test_record_anchors_every_entry_in_runtime_pcr(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    for i in range(3):
        audit.record({"event": "login", "user": f"op{i}", "service": "sshd"})
    got = verify_audit_chain([e.to_json() for e in audit.entries()], verified_anchors(tpm, runtime))
    assert [e.seq for e in got] == [0, 1, 2]


def test_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    key_path = tmp_path / "audit.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and len(key_path.read_bytes()) == 32
    first = audit.record({"event": "login", "user": USER})
    audit.close()
    runtime.close()
    _, _, again = open_logs(tmp_path, tpm=tpm)
    assert again.record({"event": "logout", "user": USER}).operator == first.operator


def test_refuses_group_readable_key(tmp_path: Path) -> None:
    (tmp_path / "audit.key").write_bytes(os.urandom(32))
    os.chmod(tmp_path / "audit.key", 0o640)
    with pytest.raises(ConfigError, match="0600"):
        open_logs(tmp_path)


def test_identities_never_reach_disk_or_python_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, _, audit = open_logs(tmp_path)
    audit.record({"event": "session-open", "user": USER, "source": HOST, "session": "pts/9"})
    for f in tmp_path.iterdir():
        data = f.read_bytes()
        assert USER.encode() not in data and HOST.encode() not in data, f
    assert USER not in caplog.text and HOST not in caplog.text


def append_entry(tmp_path: Path, audit: AuditLog, user: str = "a") -> AuditEntry:
    """A chain-valid entry written to audit.log by hand (with the node's key), not by attest."""
    from attest.manifest.canonical import canonicalize

    data = (tmp_path / "audit.log").read_bytes()
    entries = [json.loads(c) for c in data.split(b"\x1e") if c.strip()]
    prev = bytes.fromhex(entries[-1]["entry_hash"]) if entries else ZERO_HASH
    e = new_entry(
        audit._key, {"event": "login", "user": user, "time": T}, seq=len(entries), prev_hash=prev
    )
    with (tmp_path / "audit.log").open("ab") as f:
        f.write(b"\x1e" + canonicalize(e.to_json()) + b"\n")
    return e


def crash(audit: AuditLog, runtime: RuntimeLog) -> None:
    """The process dies: its files are closed without a word (no audit-close)."""
    os.close(audit._fd)
    audit._fd = -1
    runtime.close()


def kinds(runtime: RuntimeLog) -> list[str]:
    return [r.content_type.removeprefix("attest/") for r in runtime.records()]


def unanchored(runtime: RuntimeLog) -> list[dict[str, Any]]:
    return [
        dict(r.content) for r in runtime.records() if r.content_type == "attest/audit-unanchored"
    ]


def stopped_cleanly(tmp_path: Path) -> tuple[FakeTpm, AuditLog]:
    """A node with one audit entry whose broker stopped cleanly (audit-close recorded)."""
    tpm, runtime, audit = open_logs(tmp_path)
    audit.record({"event": "login", "user": "a"})
    audit.close()
    runtime.close()
    return tpm, audit


def test_entry_written_but_not_anchored_is_anchored_on_open(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    audit.record({"event": "login", "user": "a"})
    # Crash between the audit append and the anchor: entry 1 is in the file, not anchored.
    append_entry(tmp_path, audit)
    crash(audit, runtime)
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)
    verify_audit_chain(audit2.entries(), verified_anchors(tpm, runtime2))
    # Reported first (a crash and a root's append after a kill look the same), then anchored.
    assert kinds(runtime2) == ["audit", "audit-unanchored", "audit"]
    assert unanchored(runtime2) == [
        {"first_seq": 1, "last_seq": 1, "clean_stop": False, "previous_boot": False}
    ]


def test_clean_close_records_the_entries_once(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    audit.record({"event": "login", "user": "a"})
    audit.close()
    head = audit.entries()[-1].entry_hash.hex()
    assert runtime.records()[-1].content == {"entries": 1, "head": head}
    runtime.close()
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)  # nothing to report or anchor
    audit2.close()  # nothing changed: no second audit-close
    assert kinds(runtime2) == ["audit", "audit-close"]


def test_entry_appended_after_a_clean_stop_is_reported_as_not_written_by_attest(
    tmp_path: Path,
) -> None:
    tpm, audit = stopped_cleanly(tmp_path)
    forged = [append_entry(tmp_path, audit, "x"), append_entry(tmp_path, audit, "y")]
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)
    assert unanchored(runtime2) == [
        {"first_seq": 1, "last_seq": 2, "clean_stop": True, "previous_boot": False}
    ]
    assert kinds(runtime2)[-3:] == ["audit-unanchored", "audit", "audit"]
    # The verified runtime log carries the report; the chain itself still verifies.
    q = tpm.read_pcrs(PcrSelection.of({HashAlg.SHA256: [runtime2.pcr]}))
    events = verify_runtime_log(runtime2.records(), q, pcr=runtime2.pcr).events
    assert [e.detail for e in events if isinstance(e.detail, AuditUnanchored)] == [
        AuditUnanchored(1, 2, clean_stop=True, previous_boot=False)
    ]
    got = verify_audit_chain(audit2.entries(), verified_anchors(tpm, runtime2))
    assert [e.entry_hash for e in got[1:]] == [e.entry_hash for e in forged]


def test_first_entry_appended_to_an_empty_cleanly_closed_log_is_reported(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    audit.close()  # no entry yet: audit-close {entries: 0}
    runtime.close()
    append_entry(tmp_path, audit)
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)
    assert unanchored(runtime2) == [
        {"first_seq": 0, "last_seq": 0, "clean_stop": True, "previous_boot": False}
    ]
    verify_audit_chain(audit2.entries(), verified_anchors(tpm, runtime2))


def test_entry_appended_across_a_reboot_is_judged_on_the_previous_boots_log(
    tmp_path: Path,
) -> None:
    tpm, audit = stopped_cleanly(tmp_path)
    append_entry(tmp_path, audit)
    tpm.reset()  # reboot: the runtime log is set aside, a fresh one starts
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)
    assert unanchored(runtime2) == [
        {"first_seq": 1, "last_seq": 1, "clean_stop": True, "previous_boot": True}
    ]
    assert kinds(runtime2) == ["audit-unanchored", "audit"]  # then the head's checkpoint
    verify_audit_chain(audit2.entries(), verified_anchors(tpm, runtime2))


def test_reboot_after_a_clean_stop_without_appends_reports_nothing(tmp_path: Path) -> None:
    tpm, audit = stopped_cleanly(tmp_path)
    tpm.reset()
    _, runtime2, _ = open_logs(tmp_path, tpm=tpm)
    assert kinds(runtime2) == ["audit"]


def test_audit_kinds_are_not_measured_on_request(tmp_path: Path) -> None:
    from attest.errors import OperationNotAllowed
    from attest.node.broker import protocol
    from attest.node.broker.local import LocalNode

    node = LocalNode.open(FakeTpm(), tmp_path)
    for kind, content in (
        ("audit-close", {"entries": 0, "head": "00" * 32}),
        (
            "audit-unanchored",
            {"first_seq": 0, "last_seq": 0, "clean_stop": False, "previous_boot": False},
        ),
    ):
        assert kind not in protocol.OPERATOR_MEASURE_KINDS
        with pytest.raises(OperationNotAllowed):
            node.measure(kind, content)
    node.close()


def test_refuses_to_open_truncated_audit_log(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    audit.record({"event": "login", "user": "a"})
    audit.record({"event": "logout", "user": "a"})
    audit.close()
    runtime.close()
    path = tmp_path / "audit.log"
    path.write_bytes(path.read_bytes().split(b"\n")[0] + b"\n")
    with pytest.raises(AuditChainError, match="truncated"):
        open_logs(tmp_path, tpm=tpm)


def test_tpm_reset_checkpoints_audit_head_in_new_runtime_log(tmp_path: Path) -> None:
    tpm, runtime, audit = open_logs(tmp_path)
    audit.record({"event": "login", "user": "a"})
    audit.record({"event": "logout", "user": "a"})
    audit.close()
    runtime.close()
    tpm.reset()  # reboot
    _, runtime2, audit2 = open_logs(tmp_path, tpm=tpm)
    anchors_now = verified_anchors(tpm, runtime2)
    assert [a.audit_seq for a in anchors_now] == [1]  # the head, committing to entry 0
    audit2.record({"event": "login", "user": "b"})
    verify_audit_chain(audit2.entries(), verified_anchors(tpm, runtime2))
