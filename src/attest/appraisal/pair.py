"""A node as a pair: the host (hardware TPM) and its guest VM (a vTPM the host created). Pure.

The host is appraised first, then the guest; the guest's AK is accepted only when its EK is one
the appraised host vouched for -- a ``vtpm`` event ``{guest_id, ek_sha256}`` in the host's
runtime log (``attest.runtime``, recorded by ``attest.node.tpm.vtpm``), replayed into the runtime
PCR of
a host quote that answers *this* verification's challenge:

    challenge = os.urandom(32)                       # one per pair verification
    host_nonce, guest_nonce = pair_nonces(challenge)
    ... appraise the host with host_nonce, the guest with guest_nonce ...
    pair = appraise_pair(host, guest, host_vouchings, GuestIdentity("g1", guest_ek_sha256),
                         challenge=challenge)
    token = sign_ear(pair.ear_claims(now=now), key)  # submods {"host": ..., "guest": ...}

Freshness: both nonces are derived from the one challenge (domain-separated SHA-256), so both
quotes were made after the verifier drew it; a host quote replayed from an earlier verification
fails the host's nonce check (contraindicated, "stale or replayed") and then vouches for
nothing. The runtime PCR only grows within a boot, so a vouching in a fresh host quote holds for
the host's current boot.

``host_vouchings`` is None when the host's runtime log was not verified against a fresh quote
(no facts at all), and a (possibly empty) sequence of verified ``VtpmVouch`` otherwise.

A confidential guest (SEV-SNP, docs/snp.md) adds a third layer: ``snp``, its report appraised by
``attest.appraisal.snp.appraise_guest_snp`` with the *guest* nonce, whose REPORT_DATA binds that
nonce and the guest's enrolled vTPM AK. So the three halves answer one challenge: the host quote
(host nonce), the guest vTPM quote (guest nonce) and the SNP report (guest nonce, and the AK
that signed that quote); a report from an earlier challenge fails its REPORT_DATA check and
contraindicates the ``guest-snp`` layer. The pair then has the submodules ``host``,
``guest-snp`` and ``guest-vtpm`` (without SNP evidence: ``host`` and ``guest``, as before),
the verdict is the worst of them, and the failing layer is named.
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
    TRUSTWORTHY_INSTANCE,
    UNRECOGNIZED_INSTANCE,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Verdict,
)
from attest.appraisal.ear import ear_claims, submod
from attest.runtime import VtpmVouch

HOST = "host"
GUEST = "guest"
GUEST_SNP = "guest-snp"  # attest.appraisal.snp.GUEST_SNP
GUEST_VTPM = "guest-vtpm"  # the guest layer's name when there is an SNP layer too
LAYERS = (HOST, GUEST, GUEST_SNP, GUEST_VTPM)  # every layer name a pair's JSON may hold
CHECK = "host-vouch"
_DOMAIN = b"attest-pair-v1\x00"

# How bad each verdict is for the pair: a definite "no" is worse than "could not tell".
_SEVERITY = {
    Verdict.AFFIRMING: 0,
    Verdict.WARNING: 1,
    Verdict.UNAPPRAISABLE: 2,
    Verdict.CONTRAINDICATED: 3,
    Verdict.ALARM: 4,
}


def pair_nonces(challenge: bytes) -> tuple[bytes, bytes]:
    """(host nonce, guest nonce) of one pair verification: SHA-256 of the challenge under a
    per-layer domain, so neither quote can answer the other layer's challenge."""
    if len(challenge) < 16:
        raise ValueError("the pair challenge must be at least 16 bytes")
    return (
        hashlib.sha256(_DOMAIN + b"host\x00" + challenge).digest(),
        hashlib.sha256(_DOMAIN + b"guest\x00" + challenge).digest(),
    )


@dataclass(frozen=True, slots=True)
class GuestIdentity:
    """The guest as the verifier enrolled it: the id the host knows it by and the sha256 of its
    EK TPMT_PUBLIC (``Enrollment.ek_sha256``)."""

    guest_id: str
    ek_sha256: bytes | None


@dataclass(frozen=True, slots=True)
class PairResult:
    host: AppraisalResult
    guest: AppraisalResult  # the guest's appraisal with the host-vouch finding first
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
        """The vTPM guest layer's name: ``guest``, or ``guest-vtpm`` beside ``guest-snp``."""
        return GUEST if self.snp is None else GUEST_VTPM

    @property
    def layers(self) -> dict[str, AppraisalResult]:
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


def _vouch_finding(
    host: AppraisalResult,
    guest: AppraisalResult,
    vouchings: Sequence[VtpmVouch] | None,
    ident: GuestIdentity,
    challenge: bytes | None,
) -> Finding:
    def no(value: int, why: str) -> Finding:
        return Finding(
            Claim.INSTANCE_IDENTITY, value, CHECK, f"guest vTPM not vouched for by the host: {why}"
        )

    host_name = host.node_id or "the host"
    if challenge is not None:
        want_host, want_guest = pair_nonces(challenge)
        if not (
            hmac.compare_digest(host.nonce, want_host)
            and hmac.compare_digest(guest.nonce, want_guest)
        ):
            return no(
                UNTRUSTWORTHY_INSTANCE,
                "the host and the guest were not challenged in the same pair verification",
            )
    if host.verdict is Verdict.UNAPPRAISABLE:
        return no(
            UNRECOGNIZED_INSTANCE,
            f"{host_name} could not be appraised "
            f"({host.first_divergence}), so nothing ties the guest to a host",
        )
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


def _layer_line(name: str, r: AppraisalResult) -> str:
    return f"{name} layer ({r.node_id or '?'}): {r.first_divergence or r.verdict.value}"


def _snp_challenged(snp: AppraisalResult, challenge: bytes | None) -> AppraisalResult:
    """The SNP layer, contraindicated when it was appraised with another nonce than this pair
    verification's guest nonce (its REPORT_DATA was then checked against the wrong one)."""
    if challenge is None or hmac.compare_digest(snp.nonce, pair_nonces(challenge)[1]):
        return snp
    why = "the SEV-SNP report was not appraised against this pair verification's challenge"
    return with_findings(
        snp, (Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "snp-challenge", why),)
    )


def appraise_pair(
    host: AppraisalResult,
    guest: AppraisalResult,
    host_vouchings: Sequence[VtpmVouch] | None,
    guest_identity: GuestIdentity,
    *,
    challenge: bytes | None = None,
    snp: AppraisalResult | None = None,
) -> PairResult:
    """One verdict for a host and its guest (see the module docstring). ``challenge``: the
    pair challenge both nonces were derived from (``pair_nonces``); when given, the results'
    nonces must be its. ``snp``: the guest's SEV-SNP layer (``attest.appraisal.snp``), when
    it offers SNP evidence. Never raises for evidence problems."""
    vouch = _vouch_finding(host, guest, host_vouchings, guest_identity, challenge)
    guest2 = guest
    if guest.verdict is not Verdict.UNAPPRAISABLE:
        guest2 = with_findings(guest, (vouch,), first=True)
    snp2 = None if snp is None else _snp_challenged(snp, challenge)
    guests = [(GUEST if snp2 is None else GUEST_VTPM, guest2)]
    if snp2 is not None:
        guests.insert(0, (GUEST_SNP, snp2))  # the hardware's word first, on a tie
    results = [host.verdict, *(r.verdict for _, r in guests)]
    verdict = max(results, key=_SEVERITY.__getitem__)
    # The layer to blame: the host when it is out of policy (the guest cannot be vouched for
    # then either), else the worst guest layer that is not affirming, else the host's warning.
    failed: tuple[str, AppraisalResult] | None = None
    if host.verdict not in (Verdict.AFFIRMING, Verdict.WARNING):
        failed = (HOST, host)
    else:
        bad = [(n, r) for n, r in guests if r.verdict is not Verdict.AFFIRMING]
        if bad:
            failed = max(bad, key=lambda nr: _SEVERITY[nr[1].verdict])
        elif host.verdict is Verdict.WARNING:
            failed = (HOST, host)
    first = None if failed is None else _layer_line(*failed)
    name = None if failed is None else failed[0]
    return PairResult(host, guest2, verdict, name, first, vouch, challenge, snp2)


def vouchings_of(events: Sequence[Any]) -> tuple[VtpmVouch, ...]:
    """The ``VtpmVouch`` details of verified runtime events (``VerifiedRuntimeLog.events``)."""
    return tuple(e.detail for e in events if isinstance(e.detail, VtpmVouch))
