"""attestd-tpm against a real swtpm: a BrokerServer on a temporary Unix socket, an EsapiTpm,
and the checks a remote verifier makes (quote, runtime-log replay, audit chain)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from attest.audit import verify_audit_chain
from attest.errors import AuditChainError, ClockError, OperationNotAllowed, ReplayError, TpmError
from attest.eventlog.cel import dumps_cel_record
from attest.model import PcrSelection
from attest.node.broker.client import BrokerClient
from attest.node.broker.local import LocalNode
from attest.node.broker.server import BrokerServer
from attest.node.tpm.esapi import EsapiTpm
from attest.node.tpm.swtpm import SwtpmProcess
from attest.quote import DEFAULT_POLICY, QuotePolicy, verify_quote
from attest.runtime import VerifiedRuntimeLog, new_runtime_record, verify_runtime_log

PCR = 13


@dataclass
class Broker:
    swtpm: SwtpmProcess
    state: Path
    node: LocalNode
    server: BrokerServer
    api: BrokerClient
    operator: BrokerClient

    def stop(self) -> None:
        self.api.close()
        self.operator.close()
        self.server.shutdown()
        self.node.close()


def start_broker(swtpm: SwtpmProcess, work: Path) -> Broker:
    state = work / "state-dir"
    state.mkdir(exist_ok=True)
    node = LocalNode.open(EsapiTpm(swtpm.tcti), state, pcr=PCR)
    node.runtime.measure("daemon-start", {"version": "test"})
    api, op = work / "api.sock", work / "op.sock"
    server = BrokerServer(node, api, operator_socket_path=op).start()
    return Broker(swtpm, state, node, server, BrokerClient(api), BrokerClient(op))


@pytest.fixture()
def broker(swtpm: Any, tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(swtpm[0], tmp_path)
    yield b
    b.stop()


def attest_node(
    client: BrokerClient, *, policy: QuotePolicy = DEFAULT_POLICY
) -> tuple[VerifiedRuntimeLog, tuple[Any, ...]]:
    """What a remote verifier does: fresh nonce, quote, verify, replay, audit chain."""
    ident = client.identity()
    nonce = secrets.token_bytes(32)
    q = client.quote(PcrSelection.of({b: [PCR] for b in ident.banks}), nonce)
    verify_quote(q.attest, q.signature, ak=ident.ak, nonce=nonce, pcrs=q.pcrs, policy=policy)
    runtime = verify_runtime_log(client.runtime_log(), q.pcrs, pcr=PCR)
    return runtime, verify_audit_chain(client.audit_log(), runtime.audit_anchors)


def quoted_log(client: BrokerClient) -> tuple[tuple[Any, ...], Any, tuple[Any, ...]]:
    ident = client.identity()
    q = client.quote(PcrSelection.of({b: [PCR] for b in ident.banks}), b"n")
    verify_quote(q.attest, q.signature, ak=ident.ak, nonce=b"n", pcrs=q.pcrs)
    return client.runtime_log(), q.pcrs, tuple(client.audit_log())


def test_quote_via_broker_verifies_and_runtime_log_replays(broker: Broker) -> None:
    broker.api.measure("tls-key", {"spki_sha256": "ab" * 32})
    broker.operator.measure("verity-device", {"name": "root", "root_hash": "cd" * 32})
    runtime, audit = attest_node(broker.api)
    assert [e.kind for e in runtime.events] == ["daemon-start", "tls-key", "verity-device"]
    assert audit == ()
    assert broker.api.identity().ek is not None  # swtpm has an EK: enrollment is possible


def test_audit_record_is_anchored_and_chain_verifies_remotely(broker: Broker) -> None:
    broker.operator.audit_record(
        {
            "event": "session-open",
            "user": "alice",
            "source": "10.1.2.3",
            "service": "sshd",
            "session": "pts/0",
        }
    )
    broker.operator.audit_record({"event": "session-close", "user": "alice", "service": "sshd"})
    runtime, audit = attest_node(broker.api)
    assert [e.event for e in audit] == ["session-open", "session-close"]
    assert [a.audit_seq for a in runtime.audit_anchors] == [0, 1]
    assert "alice" not in (broker.state / "audit.log").read_text()


def test_detects_deleted_audit_entry(broker: Broker) -> None:
    for i in range(3):
        broker.operator.audit_record({"event": "login", "user": f"op{i}"})
    records, pcrs, entries = quoted_log(broker.api)
    runtime = verify_runtime_log(records, pcrs, pcr=PCR)
    with pytest.raises(AuditChainError):
        verify_audit_chain(entries[:1] + entries[2:], runtime.audit_anchors)
    with pytest.raises(AuditChainError, match="truncated"):
        verify_audit_chain(entries[:2], runtime.audit_anchors)


def test_detects_edited_audit_entry(broker: Broker) -> None:
    broker.operator.audit_record({"event": "login", "user": "mallory", "result": "failure"})
    records, pcrs, entries = quoted_log(broker.api)
    runtime = verify_runtime_log(records, pcrs, pcr=PCR)
    edited = [{**entries[0], "result": "success"}]
    with pytest.raises(AuditChainError, match="edited"):
        verify_audit_chain(edited, runtime.audit_anchors)


def test_detects_truncated_runtime_log(broker: Broker) -> None:
    broker.operator.audit_record({"event": "login", "user": "a"})
    records, pcrs, _ = quoted_log(broker.api)
    with pytest.raises(ReplayError):
        verify_runtime_log(records[:-1], pcrs, pcr=PCR)  # hides the audit anchor


def test_detects_edited_runtime_log_content(broker: Broker) -> None:
    broker.api.measure("tls-key", {"spki_sha256": "ab" * 32})
    records, pcrs, _ = quoted_log(broker.api)
    forged = list(records)
    forged[1] = replace(forged[1], content={"spki_sha256": "ef" * 32})
    with pytest.raises(ReplayError, match="not what was measured"):
        verify_runtime_log(forged, pcrs, pcr=PCR)


def test_unprivileged_socket_cannot_record_audit_events(broker: Broker) -> None:
    with pytest.raises(OperationNotAllowed):
        broker.api.audit_record({"event": "login", "user": "intruder"})
    assert broker.api.audit_log() == ()


@pytest.mark.parametrize(("id_object", "secret", "rc"), [(133, 0, 0x1D5), (0, 513, 0x2D5)])
def test_oversized_credential_blob_is_a_tpm_size_error(
    broker: Broker, id_object: int, secret: int, rc: int
) -> None:
    """The protocol allows 1024 bytes; the TPM2B buffers hold less. The API gets the TPM's
    size error, not an internal error, and the TPM stays usable."""
    with pytest.raises(TpmError, match="over the") as info:
        broker.api.activate_credential(b"\x00" * id_object, b"\x00" * secret)
    assert info.value.rc == rc
    assert broker.api.identity().ak is not None


def test_crash_between_append_and_extend_is_reconciled(broker: Broker, tmp_path: Path) -> None:
    broker.stop()  # a clean stop: daemon-start, then audit-close
    # Simulate the crash: the record reached the file, the extend never reached the TPM.
    banks = broker.node.runtime.banks
    rec = new_runtime_record(2, "config", {"sha256": "12" * 32}, pcr=PCR, banks=banks)
    with (broker.state / "runtime.log").open("a") as f:
        f.write(dumps_cel_record(rec))
    again = start_broker(broker.swtpm, tmp_path)
    try:
        runtime, _ = attest_node(again.api)
        kinds = ["daemon-start", "audit-close", "config", "daemon-start"]
        assert [e.kind for e in runtime.events] == kinds
    finally:
        again.stop()


def test_tpm_reset_rotates_runtime_log_and_checkpoints_audit(
    broker: Broker, tmp_path: Path
) -> None:
    broker.operator.audit_record({"event": "login", "user": "a"})
    broker.stop()
    broker.swtpm.stop()  # a reboot: the next start does TPM2_Startup(CLEAR)
    broker.swtpm.start()
    again = start_broker(broker.swtpm, tmp_path)
    try:
        assert len(again.node.runtime.rotated) == 1
        assert again.node.runtime.rotated[0].exists()
        runtime, audit = attest_node(again.api)
        assert [e.kind for e in runtime.events] == ["audit", "daemon-start"]  # checkpoint first
        assert len(audit) == 1
    finally:
        again.stop()


def test_tpm_loss_reports_tpm_error_with_rc_and_recovers(broker: Broker) -> None:
    broker.node.runtime.add_reset_hook(
        lambda: broker.node.runtime.measure("daemon-start", {"version": "test"})
    )
    broker.operator.audit_record({"event": "login", "user": "a"})
    sel = PcrSelection.of({b: [PCR] for b in broker.api.identity().banks})
    broker.swtpm.stop(orderly=False)  # the TPM vanishes
    with pytest.raises(TpmError) as info:
        broker.api.quote(sel, b"n")
    assert info.value.rc != 0
    with pytest.raises(TpmError):
        broker.api.measure("config", {"sha256": "34" * 32})
    broker.swtpm.start()  # back (PCRs reset by TPM2_Startup(CLEAR))
    broker.api.measure("config", {"sha256": "56" * 32})
    # A killed TPM lost power without TPM2_Shutdown: its clock is honestly reported unsafe.
    with pytest.raises(ClockError):
        attest_node(broker.api)
    runtime, audit = attest_node(broker.api, policy=QuotePolicy(require_safe_clock=False))
    # New log: the reset hooks re-anchored the audit head and recorded a daemon start.
    assert [e.kind for e in runtime.events] == ["audit", "daemon-start", "config"]
    assert len(audit) == 1
