"""Runtime measurement log: the pure verifier and the on-disk log with a fake TPM."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from attest.errors import EventLogFormatError, ReplayError, TpmError
from attest.eventlog.cel import CelRecord, dumps_cel_record, loads_cel
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.logs.runtime import RuntimeLog
from attest.node.tpm.fake import FakeTpm
from attest.runtime import (
    DEFAULT_RUNTIME_PCR,
    AuditAnchor,
    ConfigDigest,
    DaemonStart,
    VerityDevice,
    measured_bytes,
    new_runtime_record,
    verify_runtime_log,
)

PCR = DEFAULT_RUNTIME_PCR
BANKS = (HashAlg.SHA256, HashAlg.SHA1)


def quoted(tpm: FakeTpm, pcr: int = PCR) -> PcrValues:
    return tpm.read_pcrs(PcrSelection.of({b: [pcr] for b in BANKS}))


def sample(tmp_path: Path) -> tuple[FakeTpm, RuntimeLog]:
    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / "runtime.log", tpm)
    log.measure("daemon-start", {"version": "0.1.0", "boot_id": "b1"})
    log.measure("config", {"sha256": "11" * 32})
    log.measure("tls-key", {"spki_sha256": "22" * 32})
    log.measure("verity-device", {"name": "root", "root_hash": "33" * 32, "salt": "ab"})
    return tpm, log


def test_log_replays_into_quoted_pcr_with_typed_events(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    v = verify_runtime_log(log.records(), quoted(tpm), pcr=PCR)
    assert [e.kind for e in v.events] == ["daemon-start", "config", "tls-key", "verity-device"]
    assert v.events[0].detail == DaemonStart("0.1.0", "b1")
    assert v.events[1].detail == ConfigDigest(bytes.fromhex("11" * 32))
    verity = v.events[3].detail
    assert isinstance(verity, VerityDevice) and verity.extra == {"salt": "ab"}
    # The file on disk is the same log.
    from_disk = loads_cel((tmp_path / "runtime.log").read_bytes())
    assert verify_runtime_log(from_disk, quoted(tpm), pcr=PCR).records == v.records


def test_measured_bytes_are_rfc8785_of_kind_and_content() -> None:
    expected = b'{"content":{"sha256":"ab"},"kind":"config"}'
    assert measured_bytes("config", {"sha256": "ab"}) == expected


def test_rejects_edited_content_whose_digest_still_replays(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    records = list(log.records())
    # Swap the TLS key's content but keep the measured digests: the PCR still replays.
    records[2] = replace(records[2], content={"spki_sha256": "66" * 32})
    with pytest.raises(ReplayError, match="content is not what was measured"):
        verify_runtime_log(records, quoted(tpm), pcr=PCR)


def test_rejects_truncated_log(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    with pytest.raises(ReplayError) as info:
        verify_runtime_log(log.records()[:-1], quoted(tpm), pcr=PCR)
    assert ("sha256", PCR) in info.value.invalid_pcrs


def test_rejects_deleted_record_as_gap(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    records = list(log.records())
    del records[1]
    with pytest.raises(EventLogFormatError, match="without gaps"):
        verify_runtime_log(records, quoted(tpm), pcr=PCR)


def test_rejects_renumbered_log_after_deletion(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    records = [replace(r, recnum=i) for i, r in enumerate(log.records()[1:])]
    with pytest.raises(ReplayError):
        verify_runtime_log(records, quoted(tpm), pcr=PCR)


def test_rejects_record_on_another_pcr(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    records = list(log.records())
    records[0] = replace(records[0], pcr=14)
    with pytest.raises(EventLogFormatError, match="PCR 14"):
        verify_runtime_log(records, quoted(tpm), pcr=PCR)


def test_rejects_log_replayed_against_another_pcr(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    with pytest.raises(EventLogFormatError):
        verify_runtime_log(log.records(), quoted(tpm, 12), pcr=12)


def test_rejects_foreign_content_type_and_unknown_kind() -> None:
    rec = new_runtime_record(0, "config", {"sha256": "00" * 32}, pcr=PCR, banks=BANKS)
    zero = PcrValues({HashAlg.SHA256: {PCR: bytes(32)}})
    with pytest.raises(EventLogFormatError, match="attest"):
        verify_runtime_log([replace(rec, content_type="systemd/x")], zero, pcr=PCR)
    with pytest.raises(EventLogFormatError, match="unknown runtime event kind"):
        verify_runtime_log([replace(rec, content_type="attest/evil")], zero, pcr=PCR)


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("config", {"sha256": "zz"}),
        ("config", {"sha256": "00" * 31}),
        ("config", {"sha256": "00" * 32, "note": "x"}),
        ("tls-key", {}),
        ("upgrade-decision", {"accepted": "yes", "reason": "ok", "version": "1"}),
        ("registry-decision", {"accepted": True, "reason": "ok", "previous_sequence": 1}),
        ("registry-decision", {"accepted": 1, "reason": "ok", "previous_sequence": 1}),
        ("registry-decision", {"accepted": False, "reason": "x", "previous_sequence": -1}),
        ("registry-decision", {"accepted": False, "previous_sequence": 0}),
        ("audit", {"audit_seq": -1, "entry_hash": "00" * 32}),
        ("audit", {"audit_seq": True, "entry_hash": "00" * 32}),
        ("nv-counter", {"index": 1, "value": 2**60}),
        ("daemon-start", {"version": ""}),
        ("verity-device", {"name": "root", "root_hash": "00", "ratio": 0.5}),
    ],
)
def test_refuses_malformed_event_content_before_measuring(
    kind: str, content: dict[str, object], tmp_path: Path
) -> None:
    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / "r.log", tpm)
    before = quoted(tpm)
    with pytest.raises(EventLogFormatError):
        log.measure(kind, content)
    assert quoted(tpm) == before and log.records() == ()


def test_empty_log_verifies_against_zero_pcr() -> None:
    v = verify_runtime_log((), PcrValues({HashAlg.SHA256: {PCR: bytes(32)}}), pcr=PCR)
    assert v.events == () and v.audit_anchors == ()


def test_audit_anchors_are_exposed_in_log_order(tmp_path: Path) -> None:
    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / "r.log", tpm)
    log.measure("audit", {"audit_seq": 0, "entry_hash": "aa" * 32})
    log.measure("audit", {"audit_seq": 1, "entry_hash": "bb" * 32})
    v = verify_runtime_log(log.records(), quoted(tpm), pcr=PCR)
    assert v.audit_anchors == (AuditAnchor(0, b"\xaa" * 32), AuditAnchor(1, b"\xbb" * 32))
    assert v.latest("audit") is v.events[1]


# --- the store: crash safety and reconciliation --------------------------------------------


def test_reopen_after_clean_stop_keeps_log(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    again = RuntimeLog(tmp_path / "runtime.log", tpm)
    assert len(again.records()) == 4
    again.measure("config", {"sha256": "44" * 32})
    verify_runtime_log(again.records(), quoted(tpm), pcr=PCR)


def test_crash_between_append_and_extend_is_extended_on_open(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    # The daemon died after fsync'ing record 4 but before extending it.
    rec = new_runtime_record(4, "config", {"sha256": "55" * 32}, pcr=PCR, banks=BANKS)
    with (tmp_path / "runtime.log").open("a") as f:
        f.write(dumps_cel_record(rec))
    reopened = RuntimeLog(tmp_path / "runtime.log", tpm)
    v = verify_runtime_log(reopened.records(), quoted(tpm), pcr=PCR)
    assert len(v.events) == 5


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    with (tmp_path / "runtime.log").open("a") as f:
        f.write('\x1e{"recnum":4,"pcr":13,"dig')
    reopened = RuntimeLog(tmp_path / "runtime.log", tpm)
    assert len(reopened.records()) == 4
    verify_runtime_log(reopened.records(), quoted(tpm), pcr=PCR)


def test_tpm_reset_rotates_log_aside_and_starts_fresh(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    tpm.reset()
    reopened = RuntimeLog(tmp_path / "runtime.log", tpm)
    assert reopened.records() == ()
    assert len(reopened.rotated) == 1 and reopened.rotated[0].name.startswith("runtime.log.reset-")
    assert len(loads_cel(reopened.rotated[0].read_bytes())) == 4  # kept for forensics
    reopened.measure("daemon-start", {"version": "0.1.0"})
    verify_runtime_log(reopened.records(), quoted(tpm), pcr=PCR)


def test_tpm_reset_while_running_rotates_before_next_measure(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    hooks: list[int] = []
    log.add_reset_hook(lambda: hooks.append(len(log.records())))
    tpm.reset()
    log.measure("config", {"sha256": "77" * 32})
    assert hooks == [0]
    assert [r.recnum for r in log.records()] == [0]
    verify_runtime_log(log.records(), quoted(tpm), pcr=PCR)


def test_refuses_to_start_when_pcr_was_extended_by_someone_else(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    tpm.extend(PCR, {b: b.digest(b"attacker") for b in BANKS})
    with pytest.raises(ReplayError, match="does not replay into PCR 13") as info:
        RuntimeLog(tmp_path / "runtime.log", tpm)
    assert {b for b, _ in info.value.invalid_pcrs} == {"sha256", "sha1"}


def test_refuses_to_start_when_log_file_was_deleted(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    (tmp_path / "runtime.log").unlink()
    with pytest.raises(ReplayError, match="refusing|Refusing"):
        RuntimeLog(tmp_path / "runtime.log", tpm)


def test_refuses_to_start_when_log_was_edited_locally(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)
    log.close()
    path = tmp_path / "runtime.log"
    path.write_text(path.read_text().replace("22" * 32, "99" * 32))
    with pytest.raises(ReplayError, match="not what was measured"):
        RuntimeLog(path, tpm)


def test_failed_extend_is_completed_when_tpm_returns(tmp_path: Path) -> None:
    tpm, log = sample(tmp_path)

    real_extend = tpm.extend
    calls = {"n": 0}

    def flaky(pcr: int, digests: Mapping[HashAlg, bytes]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TpmError("TPM went away", rc=0xA000A)
        real_extend(pcr, digests)

    tpm.extend = flaky  # type: ignore[method-assign]
    with pytest.raises(TpmError):
        log.measure("config", {"sha256": "88" * 32})
    # Appended but not extended; the next measure extends it first.
    log.measure("config", {"sha256": "99" * 32})
    v = verify_runtime_log(log.records(), quoted(tpm), pcr=PCR)
    assert len(v.events) == 6


def test_file_is_json_seq_one_record_a_line(tmp_path: Path) -> None:
    _, log = sample(tmp_path)
    lines = (tmp_path / "runtime.log").read_text().split("\n")[:-1]
    assert len(lines) == 4 and all(line.startswith("\x1e") for line in lines)
    doc = json.loads(lines[0][1:])
    assert doc["content_type"] == "attest/daemon-start" and doc["pcr"] == PCR


def test_measure_is_thread_safe(tmp_path: Path) -> None:
    import threading

    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / "r.log", tpm)

    def worker(n: int) -> None:
        for i in range(10):
            log.measure("nv-counter", {"index": n, "value": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records: tuple[CelRecord, ...] = log.records()
    assert [r.recnum for r in records] == list(range(40))
    verify_runtime_log(records, quoted(tpm), pcr=PCR)


def test_records_recorded_after_the_quote_are_dropped_not_trusted(tmp_path: Path) -> None:
    """A node reads its log after the quote: an event recorded in between is served but not
    quoted. The verifier verifies the prefix the quote covers and drops the tail (a race seen
    in CI right after a TPM reset, when attestd re-records its start events)."""
    from attest.runtime import verify_runtime_log_from

    tpm, log = sample(tmp_path)
    at_quote = quoted(tpm)
    log.measure("config", {"sha256": "44" * 32})  # after the quote
    replay = verify_runtime_log_from(None, log.records(), at_quote, pcr=PCR)
    assert replay.unquoted == 1 and len(replay.log.records) == 4
    assert [e.kind for e in replay.log.events][-1] == "verity-device"
    # The next quote covers the dropped record: from where the verified prefix ended.
    later = verify_runtime_log_from(replay, log.records()[4:], quoted(tpm), pcr=PCR)
    assert later.unquoted == 0 and len(later.log.records) == 5


def test_a_log_no_prefix_of_which_was_quoted_is_still_refused(tmp_path: Path) -> None:
    from attest.runtime import verify_runtime_log_from

    tpm, log = sample(tmp_path)
    tpm.extend(PCR, {b: b"\x55" * b.digest_size for b in BANKS})  # behind the log's back
    with pytest.raises(ReplayError):
        verify_runtime_log_from(None, log.records(), quoted(tpm), pcr=PCR)
