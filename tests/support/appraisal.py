"""The appraisal tests' world: a node (``FakeTpm`` extended with the real OVMF firmware log and
a runtime log of typed events), a registry signed with the TEST keys, and ``run`` (one
appraisal). See tests/unit/test_appraisal.py for what it models."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tests.support.manifest import FAR, NOW, Signer, release, sign_doc

from attest.appraisal import AppraisalResult, appraise
from attest.audit import ZERO_HASH, new_entry
from attest.enroll import Enrollment
from attest.eventlog import facts, load_options_digest, parse_event_log, replay_self
from attest.evidence import EVIDENCE_VERSION, b64
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.envelope import sign
from attest.manifest.model import (
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
    extra_events: Sequence[tuple[str, Mapping[str, Any]]] = (),
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
        *extra_events,
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
    kw.setdefault("platform_id", PLATFORM)
    return appraise(
        doc if doc is not None else node.evidence(nonce),
        enrollment=enrollment or node.enrollment,
        nonce=nonce,
        selection=SELECTION,
        registry=registry,
        tls_binding=None,
        now=NOW,
        **kw,
    )


def measure(node: Node, kind: str, content: dict[str, Any]) -> None:
    rec = new_runtime_record(
        len(node.records), kind, content, pcr=RUNTIME_PCR, banks=[HashAlg.SHA256]
    )
    node.tpm.extend(RUNTIME_PCR, dict(rec.digests))
    node.records.append(rec.to_json())
