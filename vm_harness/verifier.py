"""The harness as a verifier, in process, on attest's one path -- what ``attest verify`` runs:
``attest.verifier.contact`` (``open_channels``: the node's API, and its mutual-TLS listener with
the harness's client certificate for credential activation and the audit log; ``enroll``: EK
certificate chain to the harness's swtpm CA, AK attributes, credential activation; ``gather``: a
fresh challenge) and ``attest.appraisal.appraise_incremental`` against a registry blessing the
releases and the harness platform's reference (``trust.verifier_registry``), the result signed
as an EAR (``attest.appraisal.ear``) and read back with its signature checked.

Every scenario's trust decision is the EAR's (``ear.status``, ``attest.verdict``) and the
result's (the checks that failed, the release its authenticated dm-verity root hash names). The
harness adds observations only: the PCR values the verified quote covers (prediction == quote)
and, for a release PCR that differs from the prediction, the first measurement that differs
(``explain``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from attest import uki
from attest.appraisal import AppraisalResult
from attest.appraisal.claims import Finding, Tier, Verdict
from attest.appraisal.ear import result_ear, verify_ear
from attest.enroll import Enrollment
from attest.errors import EvidenceFormatError
from attest.eventlog.replay import VerifiedEventLog
from attest.evidence import parse_evidence
from attest.manifest.model import VerifiedRegistry
from attest.model import HashAlg, PcrSelection
from attest.tpmstruct import ClockInfo
from attest.verifier.client import NodeClient
from attest.verifier.contact import (
    appraise_evidence,
    enroll,
    gather,
    open_channels,
    selection_for,
)

from .build import PLATFORM_ID, NodeImage
from .run import Vm
from .trust import tls_files

TIMEOUT = 60.0  # per request: a TCG guest on a loaded 2-core machine answers slowly
RELEASE_PCRS = (4, 9, 11, 12, 15)  # what a release pins (expected-pcrs.json)

PCR_MEANING = {
    0: "firmware code (platform)",
    1: "firmware configuration (platform)",
    2: "option ROMs (platform)",
    4: "boot applications: the UKI and its kernel",
    9: "the kernel's LoadOptions (command line) and initrd",
    11: "UKI sections",
    12: "command line override / credentials",
    15: "the booted slot's dm-verity root hash (measured by the initramfs)",
}


@dataclass(frozen=True)
class Attestation:
    """One appraisal of a VM: the decision (``result`` and the EAR's claims, signature
    checked) and the harness's observations."""

    result: AppraisalResult
    ear: Mapping[str, Any]
    enrollment: Enrollment
    quoted: Mapping[int, bytes]  # sha256 PCRs the verified quote covers ({} if it did not)
    firmware: VerifiedEventLog | None  # the firmware log replayed into the quote, if it did
    seconds: float

    @property
    def submod(self) -> Mapping[str, Any]:
        sub: Mapping[str, Any] = self.ear["submods"][self.result.node_id or "node"]
        return sub

    @property
    def status(self) -> str:
        """The EAR's ``ear.status``: affirming, warning, contraindicated or none."""
        return str(self.submod["ear.status"])

    @property
    def tier(self) -> Tier:
        """The tier the EAR's ``ear.status`` names."""
        return Tier.of_label(self.submod["ear.status"])

    @property
    def verdict(self) -> Verdict:
        """The EAR's ``attest.verdict`` (``ALARM``: the AK or EK is not the enrolled one)."""
        return Verdict(self.submod["attest.verdict"])

    @property
    def release(self) -> str | None:
        """The release the authenticated dm-verity root hash names (blessed or not)."""
        d = self.result.release
        return None if d is None or d.release is None else d.release.version

    def affirming_as(self, version: str) -> bool:
        """Affirming, as release ``version``, blessed."""
        d = self.result.release
        return self.tier is Tier.AFFIRMING and self.release == version and d is not None and d.ok

    @property
    def failed(self) -> tuple[Finding, ...]:
        """The findings worse than affirming, in check order."""
        return tuple(f for f in self.result.findings if f.tier > Tier.AFFIRMING)

    @property
    def failed_checks(self) -> frozenset[str]:
        return frozenset(f.check for f in self.failed)

    def summary(self) -> str:
        what = f"{self.status} as {self.release}" if self.release else self.status
        if self.verdict.value != self.status and self.verdict is not Verdict.UNAPPRAISABLE:
            what += f" ({self.verdict.value})"
        why = "; ".join(f"{f.check}: {f.explanation}" for f in self.failed)
        return what + (f": {why}" if why else "")


def ek_cas(vm: Vm) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    st = vm.tpm_state()
    return (
        [x509.load_pem_x509_certificate(st.root_ca.read_bytes())],
        [x509.load_pem_x509_certificate(st.intermediate_ca.read_bytes())],
    )


def _channels(vm: Vm) -> AbstractContextManager[tuple[NodeClient, NodeClient | None]]:
    tls = tls_files(vm.work)
    return open_channels(
        vm.url,
        tls_ca=str(tls.ca),
        client_cert=(str(tls.client_cert), str(tls.client_key)),
        activation_url=vm.mtls_url,
        timeout=TIMEOUT,
    )


def _enroll(client: NodeClient, channel: NodeClient | None, vm: Vm, now: datetime) -> Enrollment:
    roots, inter = ek_cas(vm)
    return enroll(client, now=now, ek_roots=roots, ek_intermediates=inter, activator=channel)


def enroll_vm(vm: Vm) -> Enrollment:
    """Enroll the node as ``attest verify`` does on first contact."""
    with _channels(vm) as (client, channel):
        return _enroll(client, channel, vm, datetime.now(UTC))


def attest_vm(
    vm: Vm,
    *,
    registry: VerifiedRegistry | None,
    key: ec.EllipticCurvePrivateKey,
    enrollment: Enrollment | None = None,
    previous: ClockInfo | None = None,
    pcrs: PcrSelection | None = None,
) -> Attestation:
    """One contact: enroll (unless ``enrollment`` is given), challenge, appraise, sign and
    check the EAR. ``pcrs``: the selection besides the runtime PCR (default: ``attest
    verify``'s, sha256 0-9, 11, 12, 15). Raises ``TransportError`` for a node that does not
    answer."""
    t0 = time.monotonic()
    now = datetime.now(UTC)  # taken once, as attest verify does
    with _channels(vm) as (client, channel):
        if enrollment is None:
            enrollment = _enroll(client, channel, vm, now)
        selection = selection_for(enrollment.runtime_pcr, pcrs)
        ev = gather(client, selection, operator=channel, identity=client.identity())
    done = appraise_evidence(
        ev,
        enrollment=enrollment,
        registry=registry,
        platform_id=PLATFORM_ID,
        previous=previous,
        now=now,
    )
    result = done.result
    claims = verify_ear(result_ear(result, key, now=now), key.public_key())
    return Attestation(
        result,
        claims,
        enrollment,
        _quoted(result, ev.doc),
        done.memory.firmware,
        time.monotonic() - t0,
    )


def _quoted(result: AppraisalResult, doc: Mapping[str, Any]) -> dict[int, bytes]:
    """The sha256 PCR values of the evidence -- only when its quote verified (``clock`` is
    set only then), so that they are the values the TPM signed."""
    if result.clock is None:
        return {}
    try:
        return dict(parse_evidence(doc).pcrs.values.get(HashAlg.SHA256, {}))
    except EvidenceFormatError:
        return {}


# --- explanation (observations, not decisions) -----------------------------------------------


def explain(att: Attestation, image: NodeImage, pcrs: Sequence[int] = RELEASE_PCRS) -> list[str]:
    """For each of ``pcrs`` whose quoted value differs from ``image``'s prediction: the PCR,
    what it holds, and the first measurement of the firmware log that differs from the
    prediction."""
    want = {int(k): bytes.fromhex(v) for k, v in image.expected_pcrs["sha256"].items()}
    return [
        explain_pcr(i, att.quoted[i], want[i], image, att.firmware)
        for i in pcrs
        if i in att.quoted and i in want and att.quoted[i] != want[i]
    ]


def explain_pcr(
    i: int, got: bytes, want: bytes, image: NodeImage, log: VerifiedEventLog | None
) -> str:
    """Name the PCR, what it holds, and the first event that differs from the prediction."""
    msg = (
        f"PCR {i} ({PCR_MEANING.get(i, '?')}): quoted {got.hex()[:16]}…, "
        f"expected {want.hex()[:16]}…"
    )
    uki_bytes = Path(image.uki).read_bytes()
    if i == 15:
        return (
            f"{msg}; the node booted a root other than release {image.version}'s "
            f"(root hash {image.verity_root_hash[:16]}…)"
        )
    if i == 9:
        predicted = uki.pcr9_events(uki_bytes)
        names = ["LoadOptions (kernel command line)", "initrd"]
    elif i == 11:
        predicted = uki.pcr11_events(uki_bytes)
        names = [
            f"{s} {what}"
            for s in uki.parse_uki(uki_bytes).sections
            for what in ("name", "contents")
        ]
    elif i == 4:
        predicted = uki.pcr4_events(uki_bytes)
        names = ["EFI action", "separator", "UKI image", "kernel image"]
    else:
        return msg
    if log is None:
        return msg
    events = [e for e in log.events if e.pcr == i]
    for n, (ev, want_d) in enumerate(zip(events, predicted, strict=False)):
        if ev.digests.get(HashAlg.SHA256) != want_d:
            what = names[n] if n < len(names) else f"event {n}"
            return f"{msg}; first changed measurement: {what}"
    if len(events) != len(predicted):
        return f"{msg}; {len(events)} events where {len(predicted)} were expected"
    return msg
