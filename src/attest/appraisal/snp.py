"""The ``guest-snp`` layer of a pair: a guest's SEV-SNP report appraised as an AR4SI result. Pure.

The guest's evidence carries an ``snp`` member (``attest.evidence.snp_of``). It is appraised in
this order, each step's failure ending it:

1. what the hardware signed (``attest.snp.verify.SnpVerifier``): the certificate table's VCEK
   or VLEK chains to a pinned AMD root, the signature, the TCB and chip-id consistency; a
   report or table that does not parse, or fails one of these, is ``instance-identity`` 99
   (cryptographic validation failed);
2. the binding (``attest.snp.reportdata``): REPORT_DATA must be encoding 1 of *this*
   challenge's nonce, the TLS key the vTPM quote's batch names (``tls_binding``: the SPKI the
   member carries must hash to it) and the guest's enrolled AK. Anything else -- a report
   from an earlier challenge, another guest's, another key's -- is ``instance-identity`` 96
   (untrustworthy): stale or replayed;
3. what governance allows: ``attest.manifest.snp.appraise_snp_release`` against the verifier's
   registry (the guest chooses nothing: the release is the one whose blessed launch has the
   report's MEASUREMENT, or the one the verifier names; ``platform``, the guest's platform as
   the verifier names it, adds that platform reference's SNP policy) with the CRLs the
   verifier holds.
   Each refusal and warning becomes a finding under the claim it speaks to: the launch
   measurement and the release (``executables``), the TCB, the chip and revocation
   (``hardware``), guest policy bits, VMPL, version and HOST_DATA (``configuration``).

Without a registry the policy is ``SnpPolicy()``'s defaults (debug refused, VMPL 0, a CRL
required) and the measurement is not recognised (``executables`` 33, a warning).

``guest_snp_layer`` is the entry point of ``attest verify --host`` and the fleet's pairs: it
takes the guest's evidence document and the verifier's choice (``require``) and returns the
layer, or None when the guest sent no report and none is required.

**A guest without a vTPM** (the verifier's choice, ``vtpm=False``; docs/snp.md, "A guest
without a vTPM"): the document is read with ``attest.evidence.parse_snp_only``, REPORT_DATA
binds the nonce and the TLS key only, the TLS key is the one the verifier's connection saw
(``peer_binding``; None offline: the document's own), and the host's vouching is the chip
(``HostChips``): the report must be VCEK-signed and its CHIP_ID one the host's verified runtime
log names in an ``snp-host`` event (``attest.runtime.SnpHostChip``), else ``host-vouch`` is
instance-identity 96 (another chip, no fresh host log) or 97 (a VLEK names no chip).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.appraisal import AppraisalResult, result_of
from attest.appraisal.claims import (
    APPROVED_BOOT,
    APPROVED_CONFIG,
    CONTRAINDICATED_HARDWARE,
    CONTRAINDICATED_RUNTIME,
    CRYPTO_VALIDATION_FAILED,
    GENUINE_HARDWARE,
    TRUSTWORTHY_INSTANCE,
    UNRECOGNIZED_INSTANCE,
    UNRECOGNIZED_RUNTIME,
    UNSAFE_CONFIG,
    UNSAFE_HARDWARE,
    UNSUPPORTABLE_CONFIG,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
)
from attest.errors import EvidenceFormatError, SnpCheckError, SnpFormatError
from attest.evidence import UnverifiedSnpEvidence, parse_evidence, parse_snp_only, snp_of
from attest.manifest.model import VerifiedRegistry
from attest.manifest.snp import appraise_snp_release
from attest.snp.certs import UnverifiedCrl
from attest.snp.certtable import chain_of, parse_cert_table
from attest.snp.findings import Finding as SnpFinding
from attest.snp.findings import SnpCheck
from attest.snp.policy import SnpDecision, SnpPolicy, VerifiedCrl, evaluate_snp_policy, verify_crl
from attest.snp.report import Signer, parse_report
from attest.snp.reportdata import verify_report_data
from attest.snp.verify import SnpVerifier, VerifiedReport

POLICY_ID = "attest/snp"
HOST_VOUCH = "host-vouch"  # attest.appraisal.pair.CHECK


@dataclass(frozen=True, slots=True)
class HostChips:
    """What vouches for a guest without a vTPM: the chip ids of the ``snp-host`` events in the
    host's runtime log (``attest.appraisal.pair.host_chips_of``), None when that log did not
    verify against a fresh host quote; ``host``: the host's name, for the explanation."""

    host: str
    chips: tuple[bytes, ...] | None


def _chip_vouch(vr: VerifiedReport, vouch: HostChips) -> Finding:
    """The ``host-vouch`` finding of a guest without a vTPM: its report's chip is the host's."""

    def no(value: int, why: str) -> Finding:
        return Finding(
            Claim.INSTANCE_IDENTITY, value, HOST_VOUCH, f"guest not vouched for by the host: {why}"
        )

    if vouch.chips is None:
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{vouch.host}'s quote and runtime log did not verify for this challenge: no "
            "fresh record of its SEV-SNP chip",
        )
    if vr.signer is not Signer.VCEK:
        return no(
            UNRECOGNIZED_INSTANCE,
            f"the report is {vr.signer.name}-signed, and a VLEK names no chip: a guest without "
            "a vTPM can be tied to its host only by a VCEK-signed report's CHIP_ID",
        )
    chip = vr.report.chip_id
    if not vouch.chips:
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{vouch.host} recorded no SEV-SNP chip in this boot (attestd-tpm --snp-host)",
        )
    if not any(hmac.compare_digest(chip, c) for c in vouch.chips):
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"the guest runs on chip {chip.hex()[:16]}..., not on {vouch.host}'s "
            f"({', '.join(c.hex()[:16] + '...' for c in vouch.chips)})",
        )
    return Finding(
        Claim.INSTANCE_IDENTITY,
        TRUSTWORTHY_INSTANCE,
        HOST_VOUCH,
        f"the guest's VCEK-signed report names chip {chip.hex()[:16]}..., which {vouch.host} "
        "recorded as its own in a host quote answering this verification's challenge",
    )


_HARDWARE = {
    SnpCheck.TCB_FLOOR,
    SnpCheck.ALLOWED_CHIP,
    SnpCheck.REVOKED,
    SnpCheck.CRL_MISSING,
    SnpCheck.CRL_STALE,
    SnpCheck.CRL_INVALID,
}
_EXECUTABLES = {SnpCheck.MEASUREMENT, SnpCheck.RELEASE, SnpCheck.RELEASE_REVOKED}


def _finding(f: SnpFinding, *, refusal: bool) -> Finding:
    if f.check in _HARDWARE:
        claim, value = Claim.HARDWARE, CONTRAINDICATED_HARDWARE if refusal else UNSAFE_HARDWARE
    elif f.check in _EXECUTABLES:
        claim = Claim.EXECUTABLES
        value = CONTRAINDICATED_RUNTIME if refusal else UNRECOGNIZED_RUNTIME
    else:
        claim, value = Claim.CONFIGURATION, UNSUPPORTABLE_CONFIG if refusal else UNSAFE_CONFIG
    return Finding(claim, value, str(f.check), f.message)


def _verify(snp: UnverifiedSnpEvidence, verifier: SnpVerifier, now: datetime) -> VerifiedReport:
    """Step 1. Raises ``SnpFormatError`` or ``SnpCheckError``."""
    report = parse_report(snp.report)
    if snp.certs is None:
        raise SnpFormatError("the guest sent no certificate table with its report")
    leaf, intermediates = chain_of(parse_cert_table(snp.certs), report.signer)
    return verifier.verify(snp.report, leaf=leaf, intermediates=intermediates, now=now)


def _binding(
    vr: VerifiedReport,
    snp: UnverifiedSnpEvidence,
    *,
    nonce: bytes,
    tls_binding: bytes,
    ak_public: bytes | None,
) -> Finding:
    """Step 2."""

    def stale(why: str) -> Finding:
        return Finding(
            Claim.INSTANCE_IDENTITY,
            UNTRUSTWORTHY_INSTANCE,
            str(SnpCheck.REPORT_DATA),
            f"the SEV-SNP report does not answer this challenge (stale or replayed): {why}",
        )

    spki = snp.tls_spki
    if spki is None and tls_binding:
        return stale("the evidence names a TLS key but the report binds none")
    if spki is not None and not hmac.compare_digest(hashlib.sha256(spki).digest(), tls_binding):
        return stale("the TLS key it carries is not the one the evidence is bound to")
    try:
        version = verify_report_data(
            vr.report.report_data, nonce=nonce, tls_spki=spki, vtpm_ak=ak_public
        )
    except SnpCheckError as exc:
        return stale(str(exc))
    ak = " and the enrolled vTPM AK" if ak_public is not None else ""
    return Finding(
        Claim.INSTANCE_IDENTITY,
        TRUSTWORTHY_INSTANCE,
        str(SnpCheck.REPORT_DATA),
        f"a {vr.product.value} {vr.signer.name}-signed SEV-SNP report chaining to the pinned "
        f"AMD root; REPORT_DATA (encoding {version}) binds this challenge's nonce{ak}",
    )


def _crl_for(vr: VerifiedReport, crls: Sequence[UnverifiedCrl]) -> VerifiedCrl | None:
    """The first CRL the report's chain root signed (None: none of them)."""
    for crl in crls:
        verified = verify_crl(crl, vr.chain)
        if verified is not None:
            return verified
    return None


def _policy(
    vr: VerifiedReport,
    registry: VerifiedRegistry | None,
    *,
    release: str | None,
    platform: str | None,
    crl: VerifiedCrl | None,
    now: datetime,
) -> tuple[list[Finding], str | None]:
    """Step 3: the findings and the release the report was appraised under."""
    decision: SnpDecision
    out: list[Finding] = []
    name = None
    if registry is None:
        decision = evaluate_snp_policy(vr, SnpPolicy(), crl=crl, now=now)
        out.append(
            Finding(
                Claim.EXECUTABLES,
                UNRECOGNIZED_RUNTIME,
                str(SnpCheck.MEASUREMENT),
                f"launch measurement {vr.report.measurement.hex()} not appraised: the "
                "verifier has no registry (the default SEV-SNP policy applied)",
            )
        )
    else:
        appraisal = appraise_snp_release(
            vr, registry, version=release, crl=crl, now=now, platform=platform
        )
        decision = appraisal.decision
        if appraisal.release is not None:
            name = appraisal.release.version
        if appraisal.launch is not None:
            out.append(
                Finding(
                    Claim.EXECUTABLES,
                    APPROVED_BOOT,
                    str(SnpCheck.MEASUREMENT),
                    f"launch measurement is release {name}'s blessed launch (slot "
                    f"{appraisal.launch.slot}, {appraisal.launch.vcpus} x "
                    f"{appraisal.launch.vcpu_type}) in registry #{registry.snapshot.sequence}",
                )
            )
    out += [_finding(f, refusal=True) for f in decision.refusals]
    out += [_finding(f, refusal=False) for f in decision.warnings]
    hw = {Claim.HARDWARE: GENUINE_HARDWARE, Claim.CONFIGURATION: APPROVED_CONFIG}
    for claim, value in hw.items():
        if not any(f.claim is claim for f in out):
            what = (
                f"TCB {vr.reported_tcb.as_dict()} meets the policy, not revoked"
                if claim is Claim.HARDWARE
                else f"guest policy {vr.report.policy.as_dict()}, VMPL {vr.report.vmpl}: allowed"
            )
            out.append(Finding(claim, value, "snp-policy", what))
    return out, name


def appraise_guest_snp(
    snp: UnverifiedSnpEvidence | None,
    *,
    node_id: str,
    nonce: bytes,
    tls_binding: bytes,
    ak_public: bytes | None,
    verifier: SnpVerifier,
    registry: VerifiedRegistry | None,
    crls: Sequence[UnverifiedCrl] = (),
    release: str | None = None,
    platform: str | None = None,
    now: datetime,
    host_chips: HostChips | None = None,
) -> AppraisalResult:
    """The ``guest-snp`` layer (module docstring). ``nonce``: the guest's nonce of this pair
    verification; ``tls_binding``: the evidence's TLS key binding (b"": none); ``ak_public``:
    the enrolled AK's TPM2B_PUBLIC (None: the guest has no vTPM); ``host_chips``: for a guest
    without a vTPM, the host's chips (a ``host-vouch`` finding). Never raises for evidence."""

    def done(findings: Sequence[Finding], notes: Sequence[str] = ()) -> AppraisalResult:
        return result_of(
            findings, node_id=node_id, nonce=nonce, now=now, policy_id=POLICY_ID, notes=notes
        )

    if snp is None:
        return done(
            [
                Finding(
                    Claim.INSTANCE_IDENTITY,
                    UNTRUSTWORTHY_INSTANCE,
                    "snp-evidence",
                    "the guest sent no SEV-SNP report, and the verifier requires one",
                )
            ]
        )
    try:
        vr = _verify(snp, verifier, now)
    except (SnpFormatError, SnpCheckError) as exc:
        check = getattr(exc, "check", "snp-format")
        why = f"the SEV-SNP report is not one AMD hardware signed ({check}): {exc}"
        return done([Finding(Claim.INSTANCE_IDENTITY, CRYPTO_VALIDATION_FAILED, str(check), why)])
    bound = _binding(vr, snp, nonce=nonce, tls_binding=tls_binding, ak_public=ak_public)
    if bound.value != TRUSTWORTHY_INSTANCE:
        return done([bound])
    vouched = [] if host_chips is None else [_chip_vouch(vr, host_chips)]
    crl = _crl_for(vr, crls)
    policy, release_name = _policy(
        vr, registry, release=release, platform=platform, crl=crl, now=now
    )
    notes = [f"measurement {vr.report.measurement.hex()}"]
    if release_name is not None:
        notes.append(f"appraised under release {release_name}")
    return done([bound, *vouched, *policy], notes)


def guest_snp_layer(
    doc: Mapping[str, Any] | None,
    *,
    require: bool,
    node_id: str,
    nonce: bytes,
    ak_public: bytes | None,
    verifier: SnpVerifier,
    registry: VerifiedRegistry | None,
    crls: Sequence[UnverifiedCrl] = (),
    release: str | None = None,
    platform: str | None = None,
    now: datetime,
    host_chips: HostChips | None = None,
    peer_binding: bytes | None = None,
) -> AppraisalResult | None:
    """The ``guest-snp`` layer of a guest's evidence document (``attest verify --host`` and the
    fleet's pairs), or None when there is none: no document (the guest layer says why), or no
    ``snp`` member and not ``require``. An ``snp`` member that does not parse is a layer that
    failed (instance-identity 99), never a layer left out.

    ``host_chips`` set: the verifier appraises the guest **without a vTPM** (module
    docstring): the document is read as ``parse_snp_only``, a report is always required, the
    TLS key bound is ``peer_binding`` (the live connection's SPKI hash, b"" over plain HTTP;
    None offline: the key the document carries) and ``ak_public`` must be None."""
    if doc is None:
        return None
    if host_chips is not None:
        try:
            ev = parse_snp_only(doc)
        except EvidenceFormatError as exc:
            why = f"evidence does not parse: {exc}"
            return _unparsed(why, node_id=node_id, nonce=nonce, now=now)
        member: UnverifiedSnpEvidence | None = ev.snp
        node_id, ak_public = node_id or ev.node_id, None
        spki = ev.snp.tls_spki
        if peer_binding is not None:
            binding = peer_binding
        else:  # offline: nothing to compare the key with but the document itself
            binding = b"" if spki is None else hashlib.sha256(spki).digest()
    else:
        try:
            member = snp_of(doc)
        except EvidenceFormatError as exc:
            why = f"member does not parse: {exc}"
            return _unparsed(why, node_id=node_id, nonce=nonce, now=now)
        if member is None and not require:
            return None
        try:
            binding = parse_evidence(doc).tls_binding
        except EvidenceFormatError:
            binding = b""  # the guest layer reports the document; REPORT_DATA binds no key
    return appraise_guest_snp(
        member,
        node_id=node_id,
        nonce=nonce,
        tls_binding=binding,
        ak_public=ak_public,
        verifier=verifier,
        registry=registry,
        crls=crls,
        release=release,
        platform=platform,
        now=now,
        host_chips=host_chips,
    )


def _unparsed(what: str, *, node_id: str, nonce: bytes, now: datetime) -> AppraisalResult:
    why = f"the guest's SEV-SNP {what}"
    finding = Finding(Claim.INSTANCE_IDENTITY, CRYPTO_VALIDATION_FAILED, "snp-format", why)
    return result_of([finding], node_id=node_id, nonce=nonce, now=now, policy_id=POLICY_ID)
