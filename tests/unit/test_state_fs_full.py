"""A full state file system: a failed audit record leaves both logs exactly as before.

Faults are injected at the writes themselves (``write_all`` of the runtime log or of the audit
log raising ENOSPC, or writing half a record), at the TPM (the PCR read before the anchor, the
extend after it), and the low-space report is checked against the real file system.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attest.audit import verify_audit_chain
from attest.errors import StorageError, TpmError, TransportError
from attest.model import PcrSelection
from attest.node.broker import wire
from attest.node.broker.local import AUDIT_LOG_NAME, RUNTIME_LOG_NAME, LocalNode
from attest.node.logs import audit as audit_mod
from attest.node.logs import runtime as runtime_mod
from attest.node.logs.audit import AuditLog
from attest.node.logs.runtime import RuntimeLog
from attest.node.port import LOW_SPACE_BYTES, StateFs
from attest.node.tpm.fake import FakeTpm
from attest.runtime import verify_runtime_log

EVENT = {"event": "login", "user": "alice", "source": "198.51.100.7", "service": "sshd"}
Writer = Callable[[int, bytes], None]


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[LocalNode]:
    n = LocalNode.open(FakeTpm(), tmp_path)
    n.audit.record(EVENT)
    n.audit.record({**EVENT, "event": "logout"})
    yield n
    n.close()


def snapshot(state: Path) -> tuple[bytes, bytes]:
    return (state / RUNTIME_LOG_NAME).read_bytes(), (state / AUDIT_LOG_NAME).read_bytes()


def verify(n: LocalNode) -> int:
    """The library check ``attest audit verify`` makes: the runtime log replays into the PCR
    and the audit chain matches its anchors. Returns the number of entries verified."""
    records = n.runtime.records()
    pcrs = n.tpm.read_pcrs(PcrSelection.of({b: [n.runtime.pcr] for b in n.runtime.banks}))
    runtime = verify_runtime_log(records, pcrs, pcr=n.runtime.pcr)
    entries = [e.to_json() for e in n.audit.entries()]
    return len(verify_audit_chain(entries, runtime.audit_anchors))


def enospc(real: Writer, *, partial: bool = False) -> Writer:
    def write(fd: int, data: bytes) -> None:
        if partial:  # the file system filled up in the middle of the record
            os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "half-written"])
def test_anchor_that_does_not_fit_rolls_the_entry_back(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: bool
) -> None:
    before = snapshot(tmp_path)
    pcr_before = node.runtime.records()
    # The audit entry fits; its anchor in the runtime log does not.
    monkeypatch.setattr(runtime_mod, "write_all", enospc(runtime_mod.write_all, partial=partial))
    with pytest.raises(StorageError, match="runtime event not recorded.*No space left"):
        node.audit.record({**EVENT, "event": "session-open"})
    assert snapshot(tmp_path) == before
    assert len(node.audit.entries()) == 2 and node.runtime.records() == pcr_before
    assert verify(node) == 2
    assert node.state_fs().write_failures == 1
    # Space again: the next record succeeds with the sequence number the failed one had.
    monkeypatch.undo()
    entry = node.audit.record({**EVENT, "event": "session-close"})
    assert entry.seq == 2 and verify(node) == 3


def test_entry_that_does_not_fit_leaves_both_logs_as_before(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(tmp_path)
    monkeypatch.setattr(audit_mod, "write_all", enospc(audit_mod.write_all, partial=True))
    with pytest.raises(StorageError, match="audit entry not recorded.*No space left"):
        node.audit.record(EVENT)
    assert snapshot(tmp_path) == before and verify(node) == 2
    assert node.audit.storage_failures == 1


def test_a_runtime_event_that_does_not_fit_is_refused_cleanly(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(tmp_path)
    monkeypatch.setattr(runtime_mod, "write_all", enospc(runtime_mod.write_all, partial=True))
    with pytest.raises(StorageError, match="the log is as before"):
        node.measure("config", {"sha256": "00" * 32})
    assert snapshot(tmp_path) == before and verify(node) == 2


def test_a_tpm_failure_before_the_anchor_rolls_the_entry_back(
    node: LocalNode, tmp_path: Path
) -> None:
    """The runtime log reads the PCR before it writes the anchor: the TPM being away there
    must not leave an unanchored entry either."""
    before = snapshot(tmp_path)
    assert isinstance(node.tpm, FakeTpm)
    node.tpm.available = False
    with pytest.raises(TpmError):
        node.audit.record(EVENT)
    node.tpm.available = True
    assert snapshot(tmp_path) == before and verify(node) == 2


def test_an_anchor_written_but_not_extended_keeps_its_entry(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the anchor is in the runtime log the entry stays (its extend is completed by
    the runtime log when the TPM answers); rolling it back would orphan the anchor."""
    assert isinstance(node.tpm, FakeTpm)
    tpm = node.tpm

    def fail_extend(*_: object) -> None:
        raise TpmError("TPM went away during the extend", rc=0x000A000A)

    monkeypatch.setattr(tpm, "extend", fail_extend)
    with pytest.raises(TpmError):
        node.audit.record(EVENT)
    monkeypatch.undo()
    assert len(node.audit.entries()) == 3
    assert verify(node) == 3  # the runtime log extended the pending anchor on its next read
    # And the files reopen (a restart) with the chain intact.
    node.audit.close()
    node.runtime.close()
    runtime = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, tpm)
    audit = AuditLog(tmp_path / AUDIT_LOG_NAME, tmp_path / "audit.key", runtime)
    assert len(audit.entries()) == 3
    audit.close()
    runtime.close()


def test_a_failed_record_reopens_as_before(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rolled-back record a restart finds nothing to repair: no entry is anchored
    late and the runtime log gets no new record."""
    monkeypatch.setattr(runtime_mod, "write_all", enospc(runtime_mod.write_all))
    with pytest.raises(StorageError):
        node.audit.record(EVENT)
    monkeypatch.undo()
    node.audit.close()  # a clean stop: records audit-close, with the 2 entries
    node.runtime.close()
    before = snapshot(tmp_path)
    assert isinstance(node.tpm, FakeTpm)
    runtime = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, node.tpm)
    audit = AuditLog(tmp_path / AUDIT_LOG_NAME, tmp_path / "audit.key", runtime)
    assert snapshot(tmp_path) == before and len(audit.entries()) == 2
    audit.close()
    runtime.close()


# --- the low-space report ----------------------------------------------------------------------


def test_state_fs_reports_the_real_file_system(node: LocalNode, tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    fs = node.state_fs()
    assert fs.threshold_bytes == LOW_SPACE_BYTES and fs.write_failures == 0
    assert fs.total_bytes == st.f_blocks * st.f_frsize
    assert abs(fs.free_bytes - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    node.low_space_bytes = fs.free_bytes + 1024 * 1024 * 1024
    assert node.state_fs().low is True
    node.low_space_bytes = 0
    assert node.state_fs().low is False


def test_state_fs_travels_on_the_wire() -> None:
    fs = StateFs(free_bytes=4096, total_bytes=262144, threshold_bytes=65536, write_failures=3)
    doc = wire.STATE_FS.to_json(fs)
    assert doc == {
        "free_bytes": 4096,
        "total_bytes": 262144,
        "threshold_bytes": 65536,
        "low": True,
        "write_failures": 3,
    }
    assert wire.STATE_FS.from_json(doc) == fs
    with pytest.raises(TransportError, match="low does not match"):
        wire.STATE_FS.from_json({**doc, "low": False})
    with pytest.raises(TransportError):
        wire.STATE_FS.from_json({**doc, "free_bytes": -1})
