"""A node as a pair: the host (hardware TPM) and its guest VM (a vTPM the host created). Pure.

The guest is challenged first, then the host; the guest's AK is accepted only when its EK is one
the appraised host vouched for -- a ``vtpm`` event ``{guest_id, ek_sha256}`` in the host's
runtime log (``attest.runtime``, recorded by ``attest.node.tpm.vtpm``), replayed into the runtime
PCR of a host quote that answers *this* verification's challenge and this guest's evidence:

    challenge = os.urandom(32)                       # one per pair verification
    guest = ... appraise the guest with guest_nonce(challenge) ...    # the guest first
    digest = attest.evidence.pair_evidence_digest(guest_document)      # as received
    host = ... appraise the host with host_nonce(challenge, digest) ...
    pair = appraise_pair(host, guest, host_vouchings, GuestIdentity("g1", guest_ek_sha256),
                         challenge=challenge, guest_evidence=digest)
    token = sign_ear(pair.ear_claims(now=now), key)  # submods {"host": ..., "guest": ...}

Freshness and binding (pair v2): the guest nonce is SHA-256 of the challenge under the guest's
domain; the host nonce is SHA-256 of the challenge *and* the digest of the guest's evidence as
the verifier received it (its quote, signature, PCRs and SNP report), under the host's domain.
So the host quote was made after the verifier drew the challenge and saw the guest's answer, and
it commits to that answer: a host quote replayed from an earlier verification, or one made
beside other guest evidence (another guest answering the same guest nonce, a guest half
swapped in), fails the host's nonce check and vouches for nothing. The layer named then is the
guest layer whose own evidence is stale when there is one (the guest half was spliced in from
another challenge), else ``host`` ("the host's quote does not commit to this guest's
evidence"). The runtime PCR only grows within a boot, so a vouching in a fresh host quote holds
for the host's current boot.

``host_vouchings`` is None when the host's runtime log was not verified against a fresh quote
(no facts at all), and a (possibly empty) sequence of verified ``VtpmVouch`` otherwise.

A confidential guest (SEV-SNP, docs/snp.md) adds a third layer: ``snp``, its report appraised by
``attest.appraisal.snp.appraise_guest_snp`` with the *guest* nonce, whose REPORT_DATA binds that
nonce and the guest's enrolled vTPM AK. So the three halves answer one challenge: the guest vTPM
quote (guest nonce), the SNP report (guest nonce, and the AK that signed that quote) and the
host quote (host nonce, committing to both); a report from an earlier challenge fails its
REPORT_DATA check and contraindicates the ``guest-snp`` layer. The pair then has the submodules
``host``, ``guest-snp`` and ``guest-vtpm`` (without SNP evidence: ``host`` and ``guest``),
the verdict is the worst of them, and the failing layer is named.

A confidential guest **without a vTPM** (the verifier's choice; docs/snp.md, "A guest without a
vTPM") is the SNP layer alone: ``appraise_pair(host, None, ..., snp=...)``. Its nonce is the
guest nonce (REPORT_DATA), the host's commits to the report (``pair_evidence_digest(doc,
vtpm=False)``), and what vouches for it is the chip: the host's verified runtime log names its
SEV-SNP chip (``snp-host`` events, ``host_chips_of``) and the guest's VCEK-signed report names
the chip it runs on (the SNP layer's ``host-vouch`` finding, ``attest.appraisal.snp.HostChips``).
The submodules are ``host`` and ``guest-snp``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.appraisal import AppraisalResult, with_findings
from attest.appraisal.claims import (
    NO_CLAIM,
    TRUSTWORTHY_INSTANCE,
    UNRECOGNIZED_INSTANCE,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Verdict,
)
from attest.appraisal.ear import ear_claims, submod
from attest.appraisal.layers import GUEST, GUEST_SNP, GUEST_VTPM, HOST
from attest.errors import EvidenceFormatError
from attest.evidence import pair_evidence_digest
from attest.runtime import SnpHostChip, VtpmVouch
from attest.snp.findings import SnpCheck

CHECK = "host-vouch"
_DOMAIN = b"attest-pair-v2\x00"
NO_GUEST_EVIDENCE = bytes(32)  # the digest committed to when the guest sent no usable evidence
COMMIT_CHECK = "pair-commitment"
NOT_COMMITTED = "the host's quote does not commit to this guest's evidence"
# Findings that say a layer's evidence does not answer this challenge (stale or replayed):
# the vTPM quote's nonce (attest.appraisal.checks.QuoteCheck), the SNP report's REPORT_DATA
# and ``_snp_challenged`` below.
_FRESHNESS_CHECKS = frozenset({"quote:nonce", str(SnpCheck.REPORT_DATA), "snp-challenge"})

# How bad each verdict is for the pair: a definite "no" is worse than "could not tell".
_SEVERITY = {
    Verdict.AFFIRMING: 0,
    Verdict.WARNING: 1,
    Verdict.UNAPPRAISABLE: 2,
    Verdict.CONTRAINDICATED: 3,
    Verdict.ALARM: 4,
}


def guest_evidence_of(doc: object | None, *, vtpm: bool = True) -> bytes | None:
    """The digest a pair's host nonce commits to (``attest.evidence.pair_evidence_digest``) of
    the guest's evidence document as received; None when there is none or it does not parse
    (the guest layer is then unappraisable, and the host nonce commits to
    ``NO_GUEST_EVIDENCE``). ``vtpm=False``: the verifier appraises the guest without a vTPM."""
    if doc is None:
        return None
    try:
        return pair_evidence_digest(doc, vtpm=vtpm)
    except EvidenceFormatError:
        return None


def _check_challenge(challenge: bytes) -> None:
    if len(challenge) < 16:
        raise ValueError("the pair challenge must be at least 16 bytes")


def guest_nonce(challenge: bytes) -> bytes:
    """The guest's nonce of one pair verification (its vTPM quote and SNP REPORT_DATA answer
    it): ``SHA-256("attest-pair-v2\\0guest\\0" || challenge)``."""
    _check_challenge(challenge)
    return hashlib.sha256(_DOMAIN + b"guest\x00" + challenge).digest()


def host_nonce(challenge: bytes, guest_evidence: bytes | None) -> bytes:
    """The host's nonce of one pair verification, committing to the challenge and to the
    guest's evidence as the verifier received it: ``SHA-256("attest-pair-v2\\0host\\0" ||
    challenge || guest_evidence)``, ``guest_evidence`` being ``attest.evidence.
    pair_evidence_digest`` of the guest's document (``NO_GUEST_EVIDENCE`` when the guest sent
    none that parses). So the host's quote vouches only beside *this* guest evidence: a guest
    half from another challenge, or another guest's answer to the same guest nonce, does not
    combine with it."""
    _check_challenge(challenge)
    digest = NO_GUEST_EVIDENCE if guest_evidence is None else guest_evidence
    if len(digest) != 32:
        raise ValueError("the guest evidence digest must be 32 bytes (SHA-256)")
    return hashlib.sha256(_DOMAIN + b"host\x00" + challenge + digest).digest()


@dataclass(frozen=True, slots=True)
class GuestIdentity:
    """The guest as the verifier enrolled it: the id the host knows it by and the sha256 of its
    EK TPMT_PUBLIC (``Enrollment.ek_sha256``)."""

    guest_id: str
    ek_sha256: bytes | None


@dataclass(frozen=True, slots=True)
class PairResult:
    host: AppraisalResult
    guest: AppraisalResult | None  # the vTPM guest with the host-vouch finding first; None: none
    verdict: Verdict
    failed_layer: str | None  # one of LAYERS, or None
    first_divergence: str | None  # "host layer (...): ..." / "guest layer (...): ..."
    vouch: Finding
    challenge: bytes | None = None
    snp: AppraisalResult | None = None  # the guest's SEV-SNP layer, when it offers one

    @property
    def status(self) -> str:
        return self.verdict.ear_status

    @property
    def guest_name(self) -> str:
        """The guest's main layer: ``guest``, or ``guest-vtpm`` beside ``guest-snp``, or
        ``guest-snp`` for a guest without a vTPM."""
        if self.guest is None:
            return GUEST_SNP
        return GUEST if self.snp is None else GUEST_VTPM

    @property
    def guest_result(self) -> AppraisalResult:
        """The guest's main layer's result (``guest_name``)."""
        layer = self.guest if self.guest is not None else self.snp
        assert layer is not None  # appraise_pair: a pair without a vTPM guest has an SNP layer
        return layer

    @property
    def layers(self) -> dict[str, AppraisalResult]:
        if self.guest is None:
            return {HOST: self.host, GUEST_SNP: self.guest_result}
        if self.snp is None:
            return {HOST: self.host, GUEST: self.guest}
        return {HOST: self.host, GUEST_SNP: self.snp, GUEST_VTPM: self.guest}

    def submods(
        self, found: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """``found``: each layer's ``collateral(...)`` (``attest.appraisal.ear``), by name."""
        found = found or {}
        return {
            name: {**submod(r, found.get(name)), "attest.node.port-id": r.node_id}
            for name, r in self.layers.items()
        }

    def ear_claims(
        self,
        *,
        now: datetime,
        build: str | None = None,
        found: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return ear_claims(self.submods(found), now=now, nonce=self.challenge, build=build)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "status": self.status,
            "failed_layer": self.failed_layer,
            "first_divergence": self.first_divergence,
            "vouch": self.vouch.to_json(),
            "challenge": None if self.challenge is None else self.challenge.hex(),
            "layers": {name: r.to_json() for name, r in self.layers.items()},
        }


def _unappraised(host: AppraisalResult) -> str:
    return (
        f"{host.node_id or 'the host'} could not be appraised ({host.first_divergence}), so "
        "nothing ties the guest to a host"
    )


def _vouch_finding(
    host: AppraisalResult,
    guest: AppraisalResult,
    vouchings: Sequence[VtpmVouch] | None,
    ident: GuestIdentity,
    challenge: bytes | None,
    guest_evidence: bytes | None,
) -> Finding:
    def no(value: int, why: str) -> Finding:
        return Finding(
            Claim.INSTANCE_IDENTITY, value, CHECK, f"guest vTPM not vouched for by the host: {why}"
        )

    host_name = host.node_id or "the host"
    if challenge is not None:
        if not hmac.compare_digest(guest.nonce, guest_nonce(challenge)):
            return no(
                UNTRUSTWORTHY_INSTANCE,
                "the host and the guest were not challenged in the same pair verification",
            )
        if not hmac.compare_digest(host.nonce, host_nonce(challenge, guest_evidence)):
            return no(UNTRUSTWORTHY_INSTANCE, NOT_COMMITTED)
    if host.verdict is Verdict.UNAPPRAISABLE:
        return no(UNRECOGNIZED_INSTANCE, _unappraised(host))
    if vouchings is None:
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{host_name}'s quote and runtime log did not verify "
            f"for this challenge ({host.first_divergence}): no fresh vouching",
        )
    ek = ident.ek_sha256
    if ek is None:
        return no(UNRECOGNIZED_INSTANCE, f"guest {ident.guest_id} was enrolled without an EK")
    mine = [v for v in vouchings if v.guest_id == ident.guest_id]
    same_ek = [v for v in vouchings if hmac.compare_digest(v.ek_sha256, ek)]
    if len({v.ek_sha256 for v in mine}) > 1:
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{host_name} vouched for more than one vTPM for guest {ident.guest_id} in this boot",
        )
    if not same_ek:
        if mine:
            return no(
                UNTRUSTWORTHY_INSTANCE,
                f"guest {ident.guest_id} runs on a vTPM (EK sha256 "
                f"{ek.hex()}) that {host_name} never vouched for; it vouched EK sha256 "
                f"{mine[0].ek_sha256.hex()} for {ident.guest_id} (moved to another vTPM, "
                "or a substitute)",
            )
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{host_name} vouched for no vTPM for guest "
            f"{ident.guest_id} in this boot (the guest's EK sha256 {ek.hex()} is not "
            f"among the {len(vouchings)} vTPMs it vouched for)",
        )
    others = sorted({v.guest_id for v in same_ek} - {ident.guest_id})
    if not mine:
        return no(
            UNTRUSTWORTHY_INSTANCE,
            f"{host_name} vouched for this vTPM (EK sha256 "
            f"{ek.hex()}) as guest {', '.join(others)}'s, not {ident.guest_id}'s",
        )
    if host.verdict in (Verdict.CONTRAINDICATED, Verdict.ALARM):
        return no(
            UNRECOGNIZED_INSTANCE,
            f"{host_name} vouched for it, but the host layer is "
            f"{host.verdict.value}: a host outside policy cannot vouch",
        )
    return Finding(
        Claim.INSTANCE_IDENTITY,
        TRUSTWORTHY_INSTANCE,
        CHECK,
        f"guest {ident.guest_id}'s vTPM (EK sha256 {ek.hex()}) is vouched for by "
        f"{host_name} in a host quote answering this verification's challenge",
    )


def _snp_vouch(
    host: AppraisalResult,
    snp: AppraisalResult,
    challenge: bytes | None,
    guest_evidence: bytes | None,
) -> tuple[Finding, bool]:
    """The vouching of a guest without a vTPM, and whether the pair must add it to the SNP
    layer (False: it is the layer's own ``host-vouch`` finding, the chip comparison)."""

    def no(value: int, why: str) -> tuple[Finding, bool]:
        return (
            Finding(
                Claim.INSTANCE_IDENTITY, value, CHECK, f"guest not vouched for by the host: {why}"
            ),
            True,
        )

    if challenge is not None and not hmac.compare_digest(
        host.nonce, host_nonce(challenge, guest_evidence)
    ):
        return no(UNTRUSTWORTHY_INSTANCE, NOT_COMMITTED)
    if host.verdict is Verdict.UNAPPRAISABLE:
        return no(UNRECOGNIZED_INSTANCE, _unappraised(host))
    if host.verdict in (Verdict.CONTRAINDICATED, Verdict.ALARM):
        return no(
            UNRECOGNIZED_INSTANCE,
            f"the host layer is {host.verdict.value}: a host outside policy cannot vouch",
        )
    own = [f for f in snp.findings if f.check == CHECK]
    if own:
        return own[0], False
    finding, _ = no(
        UNRECOGNIZED_INSTANCE,
        "the guest's SEV-SNP report did not verify, so it names no chip to tie to the host",
    )
    return finding, False


def host_chips_of(events: Sequence[Any]) -> tuple[bytes, ...]:
    """The chip ids of verified ``snp-host`` runtime events (``VerifiedRuntimeLog.events``)."""
    return tuple(e.detail.chip_id for e in events if isinstance(e.detail, SnpHostChip))


def _layer_line(name: str, r: AppraisalResult) -> str:
    return f"{name} layer ({r.node_id or '?'}): {r.first_divergence or r.verdict.value}"


def _snp_challenged(snp: AppraisalResult, challenge: bytes | None) -> AppraisalResult:
    """The SNP layer, contraindicated when it was appraised with another nonce than this pair
    verification's guest nonce (its REPORT_DATA was then checked against the wrong one)."""
    if challenge is None or hmac.compare_digest(snp.nonce, guest_nonce(challenge)):
        return snp
    why = "the SEV-SNP report was not appraised against this pair verification's challenge"
    return with_findings(
        snp, (Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "snp-challenge", why),)
    )


def _stale(r: AppraisalResult) -> bool:
    """Whether a layer's evidence failed to answer the nonce it was appraised with."""
    return any(f.check in _FRESHNESS_CHECKS and f.value != TRUSTWORTHY_INSTANCE for f in r.findings)


def _evidence_unfit(r: AppraisalResult) -> bool:
    """Whether a guest layer's own evidence does not stand: it could not be appraised, or a
    check of its authenticity or freshness failed (instance identity, not the host's vouching):
    stale, not signed by the enrolled key, PCRs or report altered."""
    if r.verdict is Verdict.UNAPPRAISABLE:
        return True
    return any(
        f.claim is Claim.INSTANCE_IDENTITY
        and f.check != CHECK
        and f.value not in (TRUSTWORTHY_INSTANCE, NO_CLAIM)
        for f in r.findings
    )


def _host_committed(
    host: AppraisalResult, challenge: bytes | None, guest_evidence: bytes | None
) -> AppraisalResult:
    """The host layer, contraindicated when its quote does not commit to this challenge and
    this guest's evidence: appraised against another commitment than ``host_nonce(challenge,
    guest_evidence)``, or its quote failing that nonce."""
    if challenge is None or host.verdict is Verdict.UNAPPRAISABLE:
        return host
    if not hmac.compare_digest(host.nonce, host_nonce(challenge, guest_evidence)):
        why = f"{NOT_COMMITTED}: it was appraised against another pair commitment"
    elif _stale(host):
        why = (
            f"{NOT_COMMITTED}: the quote answers another challenge or other guest evidence "
            "than the verifier received"
        )
    else:
        return host
    return with_findings(
        host,
        (Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, COMMIT_CHECK, why),),
        first=True,
    )


def appraise_pair(
    host: AppraisalResult,
    guest: AppraisalResult | None,
    host_vouchings: Sequence[VtpmVouch] | None,
    guest_identity: GuestIdentity,
    *,
    challenge: bytes | None = None,
    guest_evidence: bytes | None = None,
    snp: AppraisalResult | None = None,
) -> PairResult:
    """One verdict for a host and its guest (see the module docstring). ``challenge``: the
    pair challenge; when given, the guest's results must have been appraised with
    ``guest_nonce(challenge)`` and the host's with ``host_nonce(challenge, guest_evidence)``,
    ``guest_evidence`` being ``attest.evidence.pair_evidence_digest`` of the guest's document
    as received (None: it sent none that parses). ``snp``: the guest's SEV-SNP layer
    (``attest.appraisal.snp``), when it offers SNP evidence. ``guest`` None: the guest has
    no vTPM (the verifier's choice), ``snp`` is then its only layer and required, and
    ``host_vouchings`` / ``guest_identity`` are not read. Never raises for evidence
    problems."""
    host2 = _host_committed(host, challenge, guest_evidence)
    snp2 = None if snp is None else _snp_challenged(snp, challenge)
    guests: list[tuple[str, AppraisalResult]] = []
    guest2: AppraisalResult | None = None
    if guest is None:
        if snp2 is None:
            raise ValueError("a pair whose guest has no vTPM needs its SEV-SNP layer")
        vouch, add = _snp_vouch(host, snp2, challenge, guest_evidence)
        if add and snp2.verdict is not Verdict.UNAPPRAISABLE:
            # after the layer's own findings: a report that is itself stale or altered is
            # what its explanation names first
            snp2 = with_findings(snp2, (vouch,))
    else:
        vouch = _vouch_finding(
            host, guest, host_vouchings, guest_identity, challenge, guest_evidence
        )
        vouched = guest
        if guest.verdict is not Verdict.UNAPPRAISABLE:
            vouched = with_findings(guest, (vouch,), first=True)
        guests.append((GUEST if snp2 is None else GUEST_VTPM, vouched))
        guest2 = vouched
    if snp2 is not None:
        guests.insert(0, (GUEST_SNP, snp2))  # the hardware's word first, on a tie
    results = [host2.verdict, *(r.verdict for _, r in guests)]
    verdict = max(results, key=_SEVERITY.__getitem__)
    # The layer to blame: when the host's quote does not commit to what the guest sent, a
    # guest layer whose own evidence does not stand (stale: spliced in from another challenge;
    # or altered), else the host; when the host is otherwise out of policy, the host (the
    # guest cannot be vouched for then either); else the worst guest layer that is not
    # affirming, else the host's warning.
    failed: tuple[str, AppraisalResult] | None = None
    unfit = [(n, r) for n, r in guests if _evidence_unfit(r)]
    if host2 is not host and unfit:
        failed = unfit[0]
    elif host2.verdict not in (Verdict.AFFIRMING, Verdict.WARNING):
        failed = (HOST, host2)
    else:
        bad = [(n, r) for n, r in guests if r.verdict is not Verdict.AFFIRMING]
        if bad:
            failed = max(bad, key=lambda nr: _SEVERITY[nr[1].verdict])
        elif host2.verdict is Verdict.WARNING:
            failed = (HOST, host2)
    first = None if failed is None else _layer_line(*failed)
    name = None if failed is None else failed[0]
    return PairResult(host2, guest2, verdict, name, first, vouch, challenge, snp2)


def vouchings_of(events: Sequence[Any]) -> tuple[VtpmVouch, ...]:
    """The ``VtpmVouch`` details of verified runtime events (``VerifiedRuntimeLog.events``)."""
    return tuple(e.detail for e in events if isinstance(e.detail, VtpmVouch))
