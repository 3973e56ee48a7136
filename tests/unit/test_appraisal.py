"""``attest.appraisal.appraise``: one named test per divergence.

The node is a ``FakeTpm`` (real PCR arithmetic, real ECDSA quotes) whose PCRs were extended
with a real firmware event log -- OVMF's direct kernel boot from ``../shared/eventlogs`` -- and
with a runtime log of ten typed events, three of them anchoring operator audit entries. The
registry is signed with the TEST keys of ``firmware_manifests/test`` under its TEST root.

The OVMF log's kernel command line (``console=ttyS0 loglevel=4``) names no dm-verity root, so
the one event that measures it (the Linux EFI stub's PCR 9 LoadOptions) is rewritten, in every
bank, to the digests the same stub measures for ``console=ttyS0 roothash=<R> initrd=initrd``:
everything else is the real log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tests.unit.manifest.manifest_helpers import FAR, NOW, Signer, release, sign_doc

from attest.appraisal import AppraisalResult, appraise
from attest.appraisal.checks import AllOf, AnyOf
from attest.appraisal.claims import Claim, Finding, Tier, Verdict
from attest.appraisal.stages import AppraisalContext
from attest.audit import ZERO_HASH, new_entry
from attest.enroll import Enrollment
from attest.eventlog import facts, load_options_digest, parse_event_log, replay_pcrs, replay_self
from attest.evidence import EVIDENCE_VERSION, b64
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.envelope import sign
from attest.manifest.model import (
    Embargo,
    PlatformReference,
    RegistrySnapshot,
    Release,
    Revocation,
    SignedPlatformReference,
    VerifiedRegistry,
)
from attest.manifest.verify import verify_root_self_signed, verify_snapshot
from attest.merkle import MerkleTree, challenge_leaf
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.tpm.fake import FakeTpm
from attest.runtime import new_runtime_record

REPO = Path(__file__).resolve().parents[2]
EVENTLOGS = REPO.parent / "shared" / "eventlogs"
OVMF_LOG = EVENTLOGS / "ovmf__q35-direct-boot.bin"
TEST_MANIFESTS = REPO / "firmware_manifests" / "test"
PLATFORM = "ovmf-q35"
RUNTIME_PCR = 13
SELECTION = PcrSelection.of({HashAlg.SHA256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, RUNTIME_PCR]})
AUDIT_KEY = b"k" * 32

pytestmark = pytest.mark.skipif(not OVMF_LOG.exists(), reason=f"{OVMF_LOG} is missing")


# --- the world: firmware log, node, registry -------------------------------------------------


def blessed(version: str = "1.4.2", seq: int = 3) -> Release:
    return release(version, seq)


R_BLESSED = blessed().verity.root_hash
R_OTHER = hashlib.sha256(b"a root file system nobody blessed").digest()


def cmdline_for(root_hash: bytes) -> str:
    return f"console=ttyS0 roothash={root_hash.hex()} initrd=initrd"


def firmware_log(root_hash: bytes) -> bytes:
    """The real OVMF log with its PCR 9 LoadOptions measurement made for ``root_hash``."""
    data = OVMF_LOG.read_bytes()
    boot = facts(replay_self(parse_event_log(data)))
    (opts,) = boot.load_options
    for alg, old in opts.digests.items():
        new = load_options_digest(cmdline_for(root_hash), HashAlg(alg))
        assert data.count(old) == 1
        data = data.replace(old, new)
    return data


def signer(name: str) -> Signer:
    pem = (TEST_MANIFESTS / "keys" / f"TEST-ONLY-{name}.pem").read_bytes()
    return Signer(load_pem_private_key(pem, None))  # type: ignore[arg-type]


@dataclass
class Node:
    """A node: the fake TPM extended with the firmware log and the runtime log."""

    tpm: FakeTpm
    fw: bytes
    records: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    version: str = "1.4.2"
    cmdline: str | None = None
    clock_ms: list[float] = field(default_factory=lambda: [1000.0])

    @property
    def enrollment(self) -> Enrollment:
        ak = self.tpm.ak_public()
        return Enrollment(
            node_id="node-7",
            ak_public=ak.tpm2b(),
            ak_name=ak.name,
            ek_sha256=None,
            ek_certificate=None,
            activated=True,
            runtime_pcr=RUNTIME_PCR,
            enrolled_at="2025-05-01T00:00:00Z",
        )

    def pcrs(self) -> PcrValues:
        return self.tpm.read_pcrs(SELECTION)

    def evidence(self, nonce: bytes, *, advance_ms: float = 10.0) -> dict[str, Any]:
        self.clock_ms[0] += advance_ms
        tree = MerkleTree.build([challenge_leaf(nonce)])
        q = self.tpm.quote(SELECTION, tree.root)
        doc: dict[str, Any] = {
            "version": EVIDENCE_VERSION,
            "node_id": "node-7",
            "quote": {"attest": b64(q.attest), "signature": b64(q.signature)},
            "pcrs": q.pcrs.to_json(),
            "batch": {"size": 1, "index": 0, "proof": [], "tls_binding": None},
            "ak": {
                "public": b64(self.tpm.ak_public().tpm2b()),
                "name": self.tpm.ak_public().name.hex(),
            },
            "firmware_log": {"start": 0, "total": len(self.fw), "data": b64(self.fw)},
            "runtime_log": {"pcr": RUNTIME_PCR, "start": 0, "records": list(self.records)},
            "verity": None,
            "image": {"version": self.version, "slot": "a"},
            "time": "2025-06-01T00:00:00+00:00",
        }
        if self.cmdline is not None:
            doc["boot"] = {"cmdline": self.cmdline}
        return doc


def make_node(
    root_hash: bytes = R_BLESSED,
    *,
    seed: bytes = b"node-7",
    version: str = "1.4.2",
    n_audit: int = 3,
    verity_event: bool = True,
    audit_key: bytes = AUDIT_KEY,
    audit_user: str = "op",
) -> Node:
    clock = [1000.0]
    tpm = FakeTpm(banks=(HashAlg.SHA256,), seed=seed, clock=lambda: clock[0] / 1000)
    fw = firmware_log(root_hash)
    for e in parse_event_log(fw).events:
        if e.type != 0x3 and HashAlg.SHA256 in e.digests:  # EV_NO_ACTION is never extended
            tpm.extend(e.pcr, {HashAlg.SHA256: e.digests[HashAlg.SHA256]})
    audit = []
    prev = ZERO_HASH
    for i in range(n_audit):
        entry = new_entry(
            audit_key,
            {
                "event": "login",
                "user": f"{audit_user}{i}",
                "source": "10.0.0.9",
                "service": "sshd",
                "result": "success",
                "time": f"2025-05-2{i}T10:00:00Z",
            },
            seq=i,
            prev_hash=prev,
        )
        audit.append(entry.to_json())
        prev = entry.entry_hash
    events: list[tuple[str, Mapping[str, Any]]] = [
        ("daemon-start", {"version": "0.1.0"}),
        ("config", {"sha256": "11" * 32}),
        ("tls-key", {"spki_sha256": "22" * 32}),
        *(
            [("verity-device", {"name": "root", "root_hash": root_hash.hex()})]
            if verity_event
            else []
        ),
        ("nv-counter", {"index": 0x01500020, "value": 3}),
        *[("audit", {"audit_seq": a["seq"], "entry_hash": a["entry_hash"]}) for a in audit],
        ("config", {"sha256": "33" * 32}),
        ("daemon-start", {"version": "0.1.0", "boot_id": "b2"}),
    ]
    records = []
    for i, (kind, content) in enumerate(events):
        rec = new_runtime_record(i, kind, content, pcr=RUNTIME_PCR, banks=[HashAlg.SHA256])
        tpm.extend(RUNTIME_PCR, dict(rec.digests))
        records.append(rec.to_json())
    node = Node(tpm, fw, records, audit, version=version, cmdline=cmdline_for(root_hash))
    node.clock_ms = clock
    return node


def make_registry(
    node: Node,
    *,
    releases: list[Release] | None = None,
    revocations: Sequence[Revocation] = (),
    platform_pcrs: PcrValues | None = None,
    variant_pcrs: Mapping[int, bytes] | None = None,
) -> VerifiedRegistry:
    """A registry #5 blessing ``releases`` (default 1.4.2 and 1.5.0), with the node's firmware
    PCRs 0-7 as the OVMF platform reference and its PCRs 4 and 9 as 1.4.2's expected values."""
    quoted = node.pcrs().values[HashAlg.SHA256]
    plat = platform_pcrs or PcrValues({HashAlg.SHA256: {i: quoted[i] for i in range(8)}})
    boot = variant_pcrs or {4: quoted[4], 9: quoted[9]}
    rels = releases if releases is not None else [blessed(), blessed("1.5.0", 4)]
    rels = [
        dataclasses.replace(
            r, expected_pcrs={PLATFORM: {"direct-boot": PcrValues({HashAlg.SHA256: dict(boot)})}}
        )
        for r in rels
    ]
    ref = PlatformReference(PLATFORM, "QEMU q35 + OVMF 2022.11", plat)
    snap = edit.checked(
        RegistrySnapshot(
            sequence=5,
            expires=FAR,
            releases={r.version: r for r in rels},
            revocations={r.version: r for r in revocations},
            platforms={PLATFORM: SignedPlatformReference(ref, ())},
        )
    )
    p = signer("platform-1")
    snap = edit.with_platform_signature(
        snap, PLATFORM, p.keyid, sign(p.private, canonicalize(ref.to_json()))
    )
    data = sign_doc(snap.to_json(), [signer("releases-1"), signer("releases-2")])
    root = verify_root_self_signed((TEST_MANIFESTS / "root.json").read_bytes()).root
    return verify_snapshot(root, data, now=NOW)


def run(
    node: Node,
    registry: VerifiedRegistry | None,
    *,
    nonce: bytes = b"n" * 32,
    doc: dict[str, Any] | None = None,
    enrollment: Enrollment | None = None,
    **kw: Any,
) -> AppraisalResult:
    kw.setdefault("previous", None)
    kw.setdefault("audit_entries", node.audit)
    return appraise(
        doc if doc is not None else node.evidence(nonce),
        enrollment=enrollment or node.enrollment,
        nonce=nonce,
        selection=SELECTION,
        registry=registry,
        platform_id=PLATFORM,
        tls_binding=None,
        now=NOW,
        **kw,
    )


@pytest.fixture(scope="module")
def good() -> Node:
    return make_node()


@pytest.fixture(scope="module")
def registry(good: Node) -> VerifiedRegistry:
    return make_registry(good)


# --- the genuine node ------------------------------------------------------------------------


def test_fixture_replays_the_real_log() -> None:
    """The fake TPM holds exactly what the real guest read, except PCR 9 (the command line)."""
    real = json.loads((EVENTLOGS / "ovmf__q35-direct-boot.pcrs.json").read_text())["sha256"]
    node = make_node()
    got = node.pcrs().values[HashAlg.SHA256]
    assert all(got[i].hex() == real[str(i)] for i in range(9))
    assert got[9].hex() != real["9"]
    assert replay_pcrs(parse_event_log(node.fw)).values[HashAlg.SHA256][9] == got[9]


def test_genuine_node_is_affirming(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry)
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.first_divergence is None
    vec = r.trustworthiness_vector
    assert vec["instance-identity"] == 2 and vec["hardware"] == 2
    assert vec["configuration"] == 2 and vec["file-system"] == 2
    assert Tier.of(vec["executables"]) is Tier.AFFIRMING
    assert r.release is not None and r.release.release is not None
    assert r.release.release.version == "1.4.2"
    assert r.clock is not None
    doc = r.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["status"] == "affirming"


# --- one test per divergence -----------------------------------------------------------------


def test_rejects_wrong_nonce(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    r = run(good, registry, doc=doc, nonce=b"m" * 32)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert r.first_divergence is not None and "nonce" in r.first_divergence
    assert r.clock is None


def test_rejects_relabelled_pcrs(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    bank = doc["pcrs"]["sha256"]
    doc["pcrs"]["sha256"] = {str(int(i) + 1 if int(i) < 13 else 14): v for i, v in bank.items()}
    r = run(good, registry, doc=doc)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 99
    assert "pcr-selection" in (r.first_divergence or "")


def test_rejects_replayed_old_quote(good: Node, registry: VerifiedRegistry) -> None:
    old = good.evidence(b"o" * 32)
    newer = run(good, registry, doc=good.evidence(b"n" * 32, advance_ms=5000))
    assert newer.verdict is Verdict.AFFIRMING and newer.clock is not None
    # The old quote, replayed with its own (captured) nonce, is older than the last one seen.
    r = run(good, registry, doc=old, nonce=b"o" * 32, previous=newer.clock)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert "clock went backwards" in (r.first_divergence or "")


def test_changed_ak_is_an_alarm(good: Node, registry: VerifiedRegistry) -> None:
    other = make_node(seed=b"another TPM")
    r = run(other, registry, enrollment=good.enrollment)
    assert r.verdict is Verdict.ALARM and r.alarm
    assert r.status == "contraindicated"
    assert r.claim(Claim.INSTANCE_IDENTITY).value == 96
    assert (r.first_divergence or "").startswith("ALARM: the node presents AK")
    assert good.enrollment.ak_name.hex() in (r.first_divergence or "")
    assert r.clock is None  # nothing from the other TPM is remembered


def test_firmware_log_that_does_not_replay(good: Node, registry: VerifiedRegistry) -> None:
    node = dataclasses.replace(good, fw=firmware_log(R_OTHER))  # the log says another cmdline
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert "sha256:9" in (r.first_divergence or "")
    assert "firmware event log does not replay" in (r.first_divergence or "")


def test_truncated_runtime_log(good: Node, registry: VerifiedRegistry) -> None:
    node = dataclasses.replace(good, records=good.records[:-1])
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert f"runtime log (PCR {RUNTIME_PCR})" in (r.first_divergence or "")


def test_audit_entry_deleted(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, audit_entries=[good.audit[0], good.audit[2]])
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert "entries were deleted" in (r.first_divergence or "")


def test_audit_tail_truncated(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, audit_entries=good.audit[:2])
    assert r.verdict is Verdict.CONTRAINDICATED
    assert "truncated" in (r.first_divergence or "")


def test_release_revoked(good: Node) -> None:
    rel = blessed()
    reg = make_registry(
        good,
        revocations=[
            Revocation(
                "1.4.2", rel.artifact_sha256, "CVE-2025-0001 in the kernel", NOW - timedelta(days=1)
            )
        ],
    )
    r = run(good, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert "release 1.4.2 was revoked" in (r.first_divergence or "")
    assert "CVE-2025-0001" in (r.first_divergence or "")


def test_verity_root_hash_not_blessed(good: Node) -> None:
    node = make_node(R_OTHER)
    # Boot PCRs as the node measured them: only the root file system is unknown.
    quoted = node.pcrs().values[HashAlg.SHA256]
    reg = make_registry(node, variant_pcrs={4: quoted[4], 9: quoted[9]})
    r = run(node, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.FILE_SYSTEM).value == 96
    assert f"dm-verity root hash {R_OTHER.hex()}" in (r.first_divergence or "")
    assert "not blessed" in (r.first_divergence or "")


def test_pcr9_cmdline_differs_names_both_root_hashes(
    good: Node, registry: VerifiedRegistry
) -> None:
    node = make_node(R_OTHER)  # release 1.4.2's kernel booted with another roothash=
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert r.first_divergence == (
        f"PCR 9: kernel command line differs from release 1.4.2: "
        f"`roothash={R_BLESSED.hex()}` → `roothash={R_OTHER.hex()}`"
    )


def test_release_pcr_not_quoted_is_never_affirming(good: Node) -> None:
    """A release that pins PCR 15 (the verity root measured by the initramfs) appraised with a
    selection that leaves 15 out: not taken as matching (fail closed), and said so."""
    quoted = good.pcrs().values[HashAlg.SHA256]
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 15: b"\x15" * 32})
    r = run(good, reg)
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.FILE_SYSTEM).value == 32
    assert not [
        f for c in r.claims for f in c.findings if f.check == "release-pcrs" and f.value < 32
    ]  # nothing approved by it
    assert (
        "PCR 15: release 1.4.2 pins it (sha256) but the quote does not include it; "
        "appraise with a PCR selection that does" in r.explanations
    )


def test_release_pcr_15_differs_is_a_file_system_finding(good: Node) -> None:
    quoted = good.pcrs().values[HashAlg.SHA256]
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 11: b"\x00" * 32})
    r = run(good, reg)  # PCR 11 is quoted (all zero on this node): equal, so affirming
    assert r.verdict is Verdict.AFFIRMING, r.explanation
    reg = make_registry(good, variant_pcrs={4: quoted[4], 9: quoted[9], 11: b"\x11" * 32})
    r = run(good, reg)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.EXECUTABLES).value == 96
    assert (r.first_divergence or "").startswith("PCR 11: unified kernel image sections differ")


def test_unauthenticated_cmdline_is_ignored(good: Node, registry: VerifiedRegistry) -> None:
    """A reported command line that is not the measured one says nothing."""
    node = dataclasses.replace(make_node(R_OTHER), cmdline=cmdline_for(R_BLESSED))
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert (r.first_divergence or "").startswith(
        "PCR 9: kernel command line or initrd differs from release 1.4.2: expected "
    )
    assert "roothash=" not in (r.first_divergence or "")


def test_embargo_overdue_is_a_warning(good: Node) -> None:
    rel = dataclasses.replace(
        blessed(),
        source_commit=None,
        embargo=Embargo(quiet_period_days=10, fleet_complete_at=NOW - timedelta(days=30)),
    )
    r = run(good, make_registry(good, releases=[rel]))
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.EXECUTABLES).value == 32
    assert "disclosure was due" in (r.first_divergence or "")


def test_platform_firmware_differs(good: Node) -> None:
    quoted = good.pcrs().values[HashAlg.SHA256]
    plat = {i: quoted[i] for i in range(8)} | {0: hashlib.sha256(b"other firmware").digest()}
    r = run(good, make_registry(good, platform_pcrs=PcrValues({HashAlg.SHA256: plat})))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.HARDWARE).value == 96
    assert (r.first_divergence or "").startswith(
        f"PCR 0: platform firmware differs from reference {PLATFORM}"
    )


def test_malformed_evidence_could_not_appraise(good: Node, registry: VerifiedRegistry) -> None:
    doc = good.evidence(b"n" * 32)
    doc["quote"]["attest"] = "not base64!"
    r = run(good, registry, doc=doc)
    assert r.verdict is Verdict.UNAPPRAISABLE and r.status == "none"
    assert "malformed evidence" in (r.first_divergence or "")


def test_without_registry_the_release_is_not_appraised(good: Node) -> None:
    r = run(good, None)
    assert r.verdict is Verdict.WARNING  # not knowing which release runs is never affirming
    assert r.trustworthiness_vector["executables"] == 33
    assert "no registry: release not appraised" in (r.first_divergence or "")
    assert "file-system" not in r.trustworthiness_vector
    assert "hardware" not in r.trustworthiness_vector


# --- policy combinators ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Fixed:
    value: int

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        return (Finding(Claim.SOURCED_DATA, self.value, "fixed", f"value {self.value}"),)


def test_any_of_takes_the_first_affirming_alternative(
    good: Node, registry: VerifiedRegistry
) -> None:
    r = run(good, registry, policy=AnyOf((_Fixed(96), _Fixed(2), _Fixed(32))))
    assert r.verdict is Verdict.AFFIRMING and r.trustworthiness_vector == {"sourced-data": 2}
    r = run(good, registry, policy=AnyOf((_Fixed(96), _Fixed(32))))
    assert r.verdict is Verdict.WARNING


def test_all_of_reports_the_worst(good: Node, registry: VerifiedRegistry) -> None:
    r = run(good, registry, policy=AllOf((_Fixed(2), _Fixed(96), _Fixed(32))))
    assert r.verdict is Verdict.CONTRAINDICATED and r.first_divergence == "value 96"


def test_changed_ek_is_an_alarm(good: Node, registry: VerifiedRegistry) -> None:
    """The identity document of this contact presents another EK than the enrolled one."""
    enrolled = dataclasses.replace(good.enrollment, ek_sha256=hashlib.sha256(b"ek").digest())
    other_ek = make_node(seed=b"another TPM").tpm.ak_public()  # any TPMT_PUBLIC will do
    identity = {
        "node_id": "node-7",
        "ak": {"public": b64(good.tpm.ak_public().tpm2b())},
        "ek": {"public": b64(other_ek.tpm2b())},
    }
    r = run(good, registry, enrollment=enrolled, identity=identity)
    assert r.verdict is Verdict.ALARM
    assert (r.first_divergence or "").startswith("ALARM: the node presents EK sha256")
