"""Host and guest as one node: ``attest.appraisal.pair`` (pure), the ``vtpm`` / ``policy`` runtime
events, the host's ``VtpmManager`` (with a fake manufacturer and EK reader) and the broker's
``vtpm_*`` operations and allow-lists."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attest.appraisal import AppraisalResult, identity_alarm, unappraisable, with_findings
from attest.appraisal.claims import (
    APPROVED_CONFIG,
    CONTRAINDICATED_RUNTIME,
    CRYPTO_VALIDATION_FAILED,
    TRUSTWORTHY_INSTANCE,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Verdict,
)
from attest.appraisal.ear import sign_ear, verify_ear
from attest.appraisal.layers import GUEST, HOST
from attest.appraisal.pair import (
    NO_GUEST_EVIDENCE,
    GuestIdentity,
    appraise_pair,
    guest_evidence_of,
    guest_nonce,
    host_nonce,
)
from attest.errors import (
    EventLogFormatError,
    EvidenceFormatError,
    OperationNotAllowed,
    TransportError,
)
from attest.eventlog.cel import CelRecord
from attest.evidence import b64, pair_evidence_digest
from attest.model import HashAlg
from attest.node.broker import protocol as p
from attest.node.tpm.vtpm import VtpmManager, ek_sha256
from attest.runtime import (
    KIND_POLICY,
    KIND_VTPM,
    MacPolicy,
    VtpmVouch,
    check_records,
    new_runtime_record,
    parse_content,
)
from attest.tpmstruct import Public, parse_public

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CHALLENGE = b"c" * 32
GUEST_DIGEST = hashlib.sha256(b"the guest evidence as received").digest()
GUEST_NONCE = guest_nonce(CHALLENGE)
HOST_NONCE = host_nonce(CHALLENGE, GUEST_DIGEST)
EK_B = hashlib.sha256(b"ek-b").digest()
EK_C = hashlib.sha256(b"ek-c").digest()


def result(node_id: str, nonce: bytes, *findings: Finding) -> AppraisalResult:
    base = AppraisalResult(
        node_id=node_id,
        verdict=Verdict.AFFIRMING,
        claims=(),
        findings=(),
        first_divergence=None,
        policy_id="attest/default@1",
        nonce=nonce,
        appraised_at=NOW,
    )
    return with_findings(base, findings)


def ok(node_id: str, nonce: bytes) -> AppraisalResult:
    return result(
        node_id,
        nonce,
        Finding(Claim.INSTANCE_IDENTITY, TRUSTWORTHY_INSTANCE, "quote", "quote ok"),
        Finding(Claim.CONFIGURATION, APPROVED_CONFIG, "runtime-log", "log ok"),
    )


HOST_OK = ok("host-1", HOST_NONCE)
GUEST_OK = ok("g1", GUEST_NONCE)
G1 = GuestIdentity("g1", EK_B)
VOUCHED = (VtpmVouch("g0", EK_C), VtpmVouch("g1", EK_B))


# --- the pair's nonces -------------------------------------------------------------------------


def test_pair_nonces_are_distinct_per_layer_challenge_and_guest_evidence() -> None:
    h, g = host_nonce(CHALLENGE, GUEST_DIGEST), guest_nonce(CHALLENGE)
    assert h != g and len(h) == len(g) == 32
    assert guest_nonce(b"d" * 32) != g and host_nonce(b"d" * 32, GUEST_DIGEST) != h
    # The host's nonce commits to the guest's evidence: other evidence, another nonce.
    assert host_nonce(CHALLENGE, hashlib.sha256(b"other guest").digest()) != h
    assert host_nonce(CHALLENGE, None) == host_nonce(CHALLENGE, NO_GUEST_EVIDENCE) != h
    # The exact definition (docs/host-guest.md), so other verifiers can recompute it.
    assert g == hashlib.sha256(b"attest-pair-v2\x00guest\x00" + CHALLENGE).digest()
    assert h == hashlib.sha256(b"attest-pair-v2\x00host\x00" + CHALLENGE + GUEST_DIGEST).digest()
    with pytest.raises(ValueError):
        guest_nonce(b"short")
    with pytest.raises(ValueError):
        host_nonce(b"short", GUEST_DIGEST)
    with pytest.raises(ValueError):
        host_nonce(CHALLENGE, b"not a digest")


# --- appraise_pair -----------------------------------------------------------------------------


def test_both_blessed_and_vouched_is_affirming() -> None:
    pair = appraise_pair(
        HOST_OK, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.verdict is Verdict.AFFIRMING and pair.failed_layer is None
    assert pair.first_divergence is None
    assert pair.guest.findings[0].check == "host-vouch"
    assert pair.guest.claim(Claim.INSTANCE_IDENTITY).value == TRUSTWORTHY_INSTANCE
    assert "vouched for by host-1" in pair.guest.findings[0].explanation


def test_guest_moved_to_a_vtpm_the_host_never_vouched_for() -> None:
    moved = GuestIdentity("g1", EK_C)  # g0's vTPM, or any other
    pair = appraise_pair(
        HOST_OK,
        GUEST_OK,
        (VtpmVouch("g1", EK_B),),
        moved,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == GUEST
    assert pair.first_divergence is not None
    assert pair.first_divergence.startswith("guest layer (g1): guest vTPM not vouched for")
    assert f"vouched EK sha256 {EK_B.hex()} for g1" in pair.first_divergence
    assert pair.host.verdict is Verdict.AFFIRMING  # the host is not blamed


def test_guest_on_a_vtpm_vouched_for_another_guest_id() -> None:
    pair = appraise_pair(
        HOST_OK,
        GUEST_OK,
        (VtpmVouch("g2", EK_B),),
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == GUEST
    assert "as guest g2's, not g1's" in (pair.first_divergence or "")


def test_no_vouching_at_all_in_this_boot() -> None:
    pair = appraise_pair(
        HOST_OK, GUEST_OK, (), G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert "vouched for no vTPM for guest g1" in (pair.first_divergence or "")


def _unblessed(node_id: str, nonce: bytes) -> AppraisalResult:
    """A fresh, authentic layer whose release is not blessed."""
    return result(
        node_id,
        nonce,
        Finding(Claim.INSTANCE_IDENTITY, TRUSTWORTHY_INSTANCE, "quote", "quote ok"),
        Finding(
            Claim.EXECUTABLES, CONTRAINDICATED_RUNTIME, "release", "release 9.9.9 is not blessed"
        ),
    )


def test_unblessed_host_is_blamed_at_the_host_layer() -> None:
    host = _unblessed("host-1", HOST_NONCE)
    pair = appraise_pair(
        host, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == HOST
    assert pair.first_divergence == "host layer (host-1): release 9.9.9 is not blessed"
    # ... and a host outside policy cannot vouch for its guest.
    assert pair.guest.verdict is Verdict.CONTRAINDICATED
    assert "a host outside policy cannot vouch" in (pair.guest.first_divergence or "")


def test_stale_host_quote_vouches_for_nothing() -> None:
    stale = _stale("host-1", HOST_NONCE)
    pair = appraise_pair(
        stale, GUEST_OK, None, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.failed_layer == HOST and pair.verdict is Verdict.CONTRAINDICATED
    assert "the host's quote does not commit to this guest's evidence" in (
        pair.first_divergence or ""
    )
    assert any("stale or replayed" in f.explanation for f in pair.host.findings)
    assert "no fresh vouching" in pair.vouch.explanation


def test_results_of_another_verification_are_refused() -> None:
    # A host result that answered some other challenge (e.g. an earlier pair verification).
    old_host = ok("host-1", host_nonce(b"o" * 32, GUEST_DIGEST))
    pair = appraise_pair(
        old_host, GUEST_OK, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == HOST
    assert "does not commit to this guest's evidence" in pair.vouch.explanation
    assert "appraised against another pair commitment" in (pair.first_divergence or "")
    # Swapped nonces (the guest answering the host's challenge) fail too.
    swapped = appraise_pair(
        ok("host-1", GUEST_NONCE),
        ok("g1", HOST_NONCE),
        VOUCHED,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert swapped.verdict is Verdict.CONTRAINDICATED
    assert "not challenged in the same pair verification" in swapped.vouch.explanation


def _stale(node_id: str, nonce: bytes) -> AppraisalResult:
    """A layer whose quote failed the nonce it was appraised with (attest.appraisal.checks)."""
    return result(
        node_id,
        nonce,
        Finding(
            Claim.INSTANCE_IDENTITY,
            UNTRUSTWORTHY_INSTANCE,
            "quote:nonce",
            "quote (nonce): the quote does not answer this challenge (stale or replayed): ...",
        ),
    )


def test_host_quote_committing_to_another_guests_evidence_is_blamed_on_host() -> None:
    # Same challenge, but the host's quote was made beside other guest evidence (a second guest
    # answering the same guest nonce): appraised with the commitment to *this* guest's
    # evidence, its quote fails the nonce check; this guest's own evidence is fresh.
    other = hashlib.sha256(b"a second guest's answer to the same guest nonce").digest()
    assert host_nonce(CHALLENGE, other) != HOST_NONCE
    pair = appraise_pair(
        _stale("host-1", HOST_NONCE),
        GUEST_OK,
        None,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == HOST
    assert pair.first_divergence == (
        "host layer (host-1): the host's quote does not commit to this guest's evidence: the "
        "quote answers another challenge or other guest evidence than the verifier received"
    )
    assert pair.host.findings[0].check == "pair-commitment"
    # The same host result beside the guest evidence it does commit to (the second guest's)
    # is refused too: this pair's guest is not the one the host answered beside.
    beside_other = appraise_pair(
        ok("host-1", host_nonce(CHALLENGE, other)),
        GUEST_OK,
        VOUCHED,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert beside_other.failed_layer == HOST
    assert beside_other.verdict is Verdict.CONTRAINDICATED
    assert "does not commit to this guest's evidence" in beside_other.vouch.explanation
    # ... while with the evidence it committed to, that host result is affirming.
    fits = appraise_pair(
        ok("host-1", host_nonce(CHALLENGE, other)),
        GUEST_OK,
        VOUCHED,
        G1,
        challenge=CHALLENGE,
        guest_evidence=other,
    )
    assert fits.verdict is Verdict.AFFIRMING and fits.failed_layer is None


def test_guest_half_spliced_from_another_challenge_is_blamed_on_the_guest() -> None:
    # A saved pair whose guest member was swapped for one from an earlier challenge: the guest's
    # quote fails its nonce, and the host's quote (committing to the original guest evidence)
    # fails the commitment to the swapped one; the guest layer is the one that does not fit.
    pair = appraise_pair(
        _stale("host-1", HOST_NONCE),
        _stale("g1", GUEST_NONCE),
        None,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.verdict is Verdict.CONTRAINDICATED and pair.failed_layer == GUEST
    assert "stale or replayed" in (pair.first_divergence or "")
    assert (pair.first_divergence or "").startswith("guest layer (g1):")
    # A guest member altered after the fact (its quote no longer signs its PCRs) does not stand
    # by itself either: the guest is named, not the host whose commitment it broke.
    altered = result(
        "g1",
        GUEST_NONCE,
        Finding(
            Claim.INSTANCE_IDENTITY,
            CRYPTO_VALIDATION_FAILED,
            "quote:pcr-digest",
            "quote (pcr-digest): the PCR values are not the ones the quote signs: ...",
        ),
    )
    pair = appraise_pair(
        _stale("host-1", HOST_NONCE),
        altered,
        None,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.failed_layer == GUEST
    # A fresh, authentic guest outside policy beside a host quote that does not commit to it:
    # the host is named (the guest's evidence stands; the host's does not fit it).
    unblessed = _unblessed("g1", GUEST_NONCE)
    pair = appraise_pair(
        _stale("host-1", HOST_NONCE),
        unblessed,
        None,
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    assert pair.failed_layer == HOST
    assert "does not commit to this guest's evidence" in (pair.first_divergence or "")


def test_unreachable_host_leaves_the_guest_unvouched() -> None:
    host = unappraisable("host-1", "node unreachable: refused", nonce=HOST_NONCE, now=NOW)
    pair = appraise_pair(host, GUEST_OK, None, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST)
    assert pair.failed_layer == HOST
    assert pair.first_divergence == "host layer (host-1): node unreachable: refused"
    assert pair.verdict is Verdict.CONTRAINDICATED  # the guest cannot be accepted either


def test_guest_alarm_stays_an_alarm() -> None:
    guest = identity_alarm("g1", "ALARM: the node presents AK x", nonce=GUEST_NONCE, now=NOW)
    pair = appraise_pair(
        HOST_OK, guest, VOUCHED, G1, challenge=CHALLENGE, guest_evidence=GUEST_DIGEST
    )
    assert pair.verdict is Verdict.ALARM and pair.failed_layer == GUEST


def test_ear_has_one_submodule_per_layer() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pair = appraise_pair(
        HOST_OK,
        GUEST_OK,
        (VtpmVouch("g1", EK_C),),
        G1,
        challenge=CHALLENGE,
        guest_evidence=GUEST_DIGEST,
    )
    claims = verify_ear(sign_ear(pair.ear_claims(now=NOW), key), key.public_key())
    assert set(claims["submods"]) == {"host", "guest"}
    assert claims["submods"]["host"]["ear.status"] == "affirming"
    assert claims["submods"]["host"]["attest.node.port-id"] == "host-1"
    assert claims["submods"]["guest"]["ear.status"] == "contraindicated"
    assert "never vouched" in claims["submods"]["guest"]["attest.explanation"]["first_divergence"]
    # Each layer's collateral lands in its own submodule only.
    reg = {"registry": {"sequence": 7, "sha256": "ab" * 32}}
    found = pair.ear_claims(now=NOW, found={"guest": reg})["submods"]
    assert found["guest"]["attest.collateral"] == reg and "attest.collateral" not in found["host"]
    assert found["guest"]["ear.appraisal-policy-id"].endswith(f";registry=7@sha256:{'ab' * 32}")
    doc = pair.to_json()
    assert doc["failed_layer"] == "guest" and set(doc["layers"]) == {"host", "guest"}
    json.dumps(doc)


# --- runtime events ----------------------------------------------------------------------------


def test_vtpm_and_policy_events_parse_and_replay() -> None:
    banks = (HashAlg.SHA256,)
    recs = [
        new_runtime_record(
            0, KIND_VTPM, {"guest_id": "g1", "ek_sha256": EK_B.hex()}, pcr=13, banks=banks
        ),
        new_runtime_record(
            1, KIND_POLICY, {"mac": "selinux", "sha256": EK_C.hex()}, pcr=13, banks=banks
        ),
    ]
    events = check_records(recs, pcr=13)
    assert events[0].detail == VtpmVouch("g1", EK_B, None)
    assert events[1].detail == MacPolicy("selinux", EK_C)


@pytest.mark.parametrize(
    "content",
    [
        {"guest_id": "g1"},
        {"guest_id": "g1", "ek_sha256": "AB" * 32},
        {"guest_id": "", "ek_sha256": "ab" * 32},
        {"guest_id": "g 1", "ek_sha256": "ab" * 32},
        {"guest_id": "g1", "ek_sha256": "ab" * 31},
        {"guest_id": "g1", "ek_sha256": "ab" * 32, "extra": 1},
    ],
)
def test_malformed_vtpm_content_is_refused(content: Mapping[str, Any]) -> None:
    with pytest.raises(EventLogFormatError):
        parse_content(KIND_VTPM, content)


# --- the host's vTPM manager -------------------------------------------------------------------


class FakeLog:
    """The host's runtime log as the manager sees it."""

    def __init__(self) -> None:
        self.recs: list[CelRecord] = []

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        rec = new_runtime_record(len(self.recs), kind, content, pcr=13, banks=(HashAlg.SHA256,))
        self.recs.append(rec)
        return rec

    def records(self, start: int = 0) -> tuple[CelRecord, ...]:
        return tuple(self.recs[start:])


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []

    def record(self, event: Mapping[str, Any]) -> object:
        self.events.append(event)
        return event


def fake_ek(seed: int) -> Public:
    """An ECC P-256 EK-shaped public area (TPMT_PUBLIC) with a distinct point per seed."""
    key = ec.derive_private_key(seed, ec.SECP256R1()).public_key().public_numbers()
    raw = (
        bytes.fromhex("0023000b000300b20020")
        + bytes(32)  # type, nameAlg, attrs, policy
        + bytes.fromhex("0006008000430010000300100020")
        + key.x.to_bytes(32, "big")
        + b"\x00\x20"
        + key.y.to_bytes(32, "big")
    )
    return parse_public(raw, sized=False)


@pytest.fixture()
def manager(tmp_path: Path) -> tuple[VtpmManager, FakeLog, FakeAudit]:
    eks = iter(range(1, 100))
    log, audit = FakeLog(), FakeAudit()

    def manufacture(guest_dir: Path, ca: Path) -> Path:
        (guest_dir / "state").mkdir()
        return guest_dir / "state"

    def read_ek(state: Path) -> tuple[Public, dict[int, bytes]]:
        return fake_ek(next(eks)), {0x01C0000A: b"cert-der"}

    m = VtpmManager(tmp_path / "vtpm", log, audit=audit, manufacture=manufacture, read_ek=read_ek)
    return m, log, audit


def test_create_remembers_and_vouches(manager: tuple[VtpmManager, FakeLog, FakeAudit]) -> None:
    m, log, _ = manager
    out = m.create("g1", operator="uid:0", now=NOW)
    assert out["recorded"] is True and out["recnum"] == 0
    (ev,) = check_records(log.recs, pcr=13)
    assert ev.detail == VtpmVouch("g1", ek_sha256(fake_ek(1)), hashlib.sha256(b"cert-der").digest())
    (vt,) = m.created()
    assert vt.guest_id == "g1" and vt.ek_sha256 == ek_sha256(fake_ek(1))
    assert (m.registry_path.stat().st_mode & 0o777) == 0o600
    # A new manager (the broker restarted) reads the same created set.
    again = VtpmManager(m.root, log, manufacture=lambda g, c: g, read_ek=lambda s: (fake_ek(9), {}))
    assert again.created() == (vt,)


def test_record_again_in_the_same_boot_is_a_no_op(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
) -> None:
    m, log, _ = manager
    m.create("g1")
    out = m.record("g1", fake_ek(1).tpm2b())  # TPM2B_PUBLIC is accepted too
    assert out["recorded"] is False and len(log.recs) == 1
    log.recs.clear()  # the host rebooted: a fresh runtime log
    assert m.record("g1", fake_ek(1).raw)["recorded"] is True


def test_refuses_a_vtpm_the_host_did_not_create(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
    caplog: pytest.LogCaptureFixture,
) -> None:
    m, log, audit = manager
    m.create("g1")
    with pytest.raises(OperationNotAllowed, match="not the vTPM this host created"):
        m.record("g1", fake_ek(42).raw, operator="uid:0")
    with pytest.raises(OperationNotAllowed, match="created no vTPM for it"):
        m.record("g2", fake_ek(42).raw, operator="uid:0")
    assert len(log.recs) == 1  # nothing vouched
    assert [e["result"] for e in audit.events] == ["denied", "denied"]
    assert audit.events[0]["service"] == "attest-vtpm-record"
    assert "refused" in caplog.text


def test_refuses_a_second_vtpm_for_the_same_guest(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
) -> None:
    m, log, audit = manager
    m.create("g1")
    with pytest.raises(OperationNotAllowed, match="already has a vTPM"):
        m.create("g1", operator="uid:0")
    assert len(m.created()) == 1 and audit.events[-1]["service"] == "attest-vtpm-create"


def test_refuses_when_this_boot_already_vouches_another_vtpm(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
) -> None:
    m, log, _ = manager
    m.create("g1")
    # This boot's log vouches another EK for g1 (e.g. the registry was restored from a backup).
    log.recs[:] = [
        new_runtime_record(
            0,
            KIND_VTPM,
            {"guest_id": "g1", "ek_sha256": EK_C.hex()},
            pcr=13,
            banks=(HashAlg.SHA256,),
        )
    ]
    with pytest.raises(OperationNotAllowed, match="already vouches another vTPM"):
        m.record("g1", fake_ek(1).raw)


@pytest.mark.parametrize("gid", ["", "../x", "a/b", ".hidden", "x" * 65])
def test_guest_ids_that_are_not_names_are_refused(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
    gid: str,
) -> None:
    with pytest.raises(OperationNotAllowed):
        manager[0].create(gid)


def test_a_tampered_registry_fails_to_load(
    manager: tuple[VtpmManager, FakeLog, FakeAudit],
) -> None:
    m, _, _ = manager
    m.create("g1")
    doc = json.loads(m.registry_path.read_text())
    doc["guests"]["g1"]["ek_sha256"] = EK_C.hex()
    m.registry_path.write_text(json.dumps(doc))
    with pytest.raises(EvidenceFormatError, match="EK digest mismatch"):
        m.created()


# --- the broker protocol -----------------------------------------------------------------------


def test_vtpm_ops_round_trip_and_are_operator_only() -> None:
    requests: list[p.Request[Any, Any]] = [
        p.Request(p.OPS.vtpm_create, p.VtpmCreate("g1")),
        p.Request(p.OPS.vtpm_record, p.VtpmRecord("g1", b"\x00\x23")),
        p.Request(p.OPS.vtpm_list, None),
    ]
    for req in requests:
        assert p.decode_request(p.encode_request(req.op, req.args)) == req
        assert req.op.name in p.OPERATOR_ONLY_OPS and req.op.name not in p.UNPRIVILEGED_OPS
    assert KIND_VTPM not in p.OPERATOR_MEASURE_KINDS  # never through measure
    assert KIND_POLICY in p.OPERATOR_MEASURE_KINDS and KIND_POLICY not in p.DEFAULT_MEASURE_KINDS
    with pytest.raises(TransportError):
        p.decode_request(b'{"op":"vtpm_record","args":{"guest_id":"g1"}}')
    with pytest.raises(TransportError):
        p.decode_request(b'{"op":"measure","args":{"kind":"nope","content":{}}}')


def test_a_failed_manufacture_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(guest_dir: Path, ca: Path) -> Path:
        (guest_dir / "state").mkdir()
        raise OSError("swtpm_setup failed")

    m = VtpmManager(
        tmp_path / "vtpm", FakeLog(), manufacture=broken, read_ek=lambda s: (fake_ek(1), {})
    )
    with pytest.raises(OSError):
        m.create("g1")
    assert m.created() == () and not (m.root / "guests" / "g1").exists()


# --- the guest evidence the host's nonce commits to (attest.evidence.pair_evidence_digest) ------


def _guest_doc(**change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "node_id": "g1",
        "quote": {"attest": b64(b"\xffTCG attest"), "signature": b64(b"sig")},
        "pcrs": {"sha256": {"0": "00" * 32, "15": "11" * 32}},
        "batch": {"size": 1, "index": 0, "proof": [], "tls_binding": None},
        "ak": {"public": b64(b"ak"), "name": "00"},
        "runtime_log": {"pcr": 15, "start": 0, "records": []},
        "time": "2026-11-22T12:00:00+00:00",
        "snp": {"report": b64(b"report"), "certs": b64(b"certs"), "tls_spki": None},
    }
    doc.update(change)
    return doc


def test_guest_evidence_digest_covers_quote_signature_pcrs_and_snp_report() -> None:
    base = pair_evidence_digest(_guest_doc())
    assert len(base) == 32
    # What the guest's freshness and identity rest on changes it ...
    changed = {
        "attest": _guest_doc(quote={"attest": b64(b"\xffTCG other"), "signature": b64(b"sig")}),
        "signature": _guest_doc(quote={"attest": b64(b"\xffTCG attest"), "signature": b64(b"s")}),
        "pcrs": _guest_doc(pcrs={"sha256": {"0": "00" * 32, "15": "12" * 32}}),
        "snp report": _guest_doc(snp={"report": b64(b"other"), "certs": None, "tls_spki": None}),
        "no snp": _guest_doc(snp=None),
    }
    for what, doc in changed.items():
        assert pair_evidence_digest(doc) != base, what
    # ... what the node says of itself unauthenticated, or the collateral, does not; nor does
    # the JSON spelling (a saved document re-encoded recomputes the same digest).
    same = _guest_doc(time="2027-01-01T00:00:00+00:00", node_id="renamed")
    same["snp"] = {"report": b64(b"report"), "certs": None, "tls_spki": None}
    assert pair_evidence_digest(same) == base
    assert pair_evidence_digest(json.loads(json.dumps(_guest_doc(), indent=2))) == base
    # The exact definition (docs/host-guest.md).
    pcrs = (0x000B).to_bytes(2, "big") + (2).to_bytes(2, "big")
    pcrs += (0).to_bytes(2, "big") + b"\x00" * 32 + (15).to_bytes(2, "big") + b"\x11" * 32
    want = hashlib.sha256(b"attest-pair-v2\x00guest-evidence\x00")
    for part in (b"\xffTCG attest", b"sig", pcrs):
        want.update(len(part).to_bytes(4, "big") + part)
    want.update(b"\x01" + (6).to_bytes(4, "big") + b"report")
    assert base == want.digest()


def test_guest_evidence_digest_of_malformed_evidence_fails_closed() -> None:
    for doc in (
        _guest_doc(quote={"attest": "not base64!", "signature": b64(b"sig")}),
        _guest_doc(pcrs={"sha256": {"-1": "00" * 32}}),
        _guest_doc(pcrs={"sha256": {"70000": "00" * 32}}),
        _guest_doc(snp="report"),
        _guest_doc(version=2),
        [],
    ):
        with pytest.raises(EvidenceFormatError):
            pair_evidence_digest(doc)
        assert guest_evidence_of(doc) is None
    assert guest_evidence_of(None) is None
    assert guest_evidence_of(_guest_doc()) == pair_evidence_digest(_guest_doc())
