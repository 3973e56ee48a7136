"""A fleet node that is a host and its guest VM (docs/host-guest.md), appraised as
``attest verify --host HOST_URL GUEST_URL`` does: one challenge, the guest challenged first
with the nonce derived from it, then the host with a nonce committing to the challenge and the
guest's evidence (``attest.appraisal.pair.host_nonce``), each layer appraised as one node, and
the pair's verdict from
``attest.appraisal.pair.appraise_pair`` -- the guest's AK is accepted only when its enrolled EK is
one the
host vouched for (a ``vtpm`` runtime event) in the host quote answering this challenge.

A guest that sends an SEV-SNP report gets the third layer ``guest-snp``
(``attest.appraisal.snp.guest_snp_layer``, with the poller's ``SnpCollateral``), as
``attest verify --host`` does. A guest **without a vTPM** (registered with ``guest_vtpm:
false``; ``PairEnrollment.guest`` None) is that layer alone, as ``attest verify --host
--no-guest-vtpm``: the pair is ``host`` + ``guest-snp``, and the host vouches for the guest by
its SEV-SNP chip (``snp-host`` events of its runtime log, ``fresh_chips``) instead of its vTPM.

This module holds what the fleet stores and shows of a pair (the per-layer summaries; the
enrollment is ``attest.verifier.fleet.enrolled.PairEnrollment``); the pair logic itself is
``attest.appraisal.pair``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attest.appraisal import AppraisalResult, Appraised, unappraisable
from attest.appraisal.layers import HOST
from attest.appraisal.pair import (
    GuestIdentity,
    PairResult,
    appraise_pair,
    guest_nonce,
    host_chips_of,
    vouchings_of,
)
from attest.appraisal.snp import HostChips, guest_snp_layer
from attest.enroll import Enrollment
from attest.manifest import VerifiedRegistry
from attest.runtime import RuntimeEvent, VtpmVouch
from attest.snp.certs import UnverifiedCrl
from attest.snp.verify import SnpVerifier
from attest.verifier.fleet.appraiser import summarize
from attest.verifier.fleet.enrolled import PairEnrollment


@dataclass(frozen=True)
class SnpCollateral:
    """What the fleet checks a confidential guest's SEV-SNP report with (docs/snp.md, "One
    verdict for host and guest"): the verifier (the pinned AMD roots, its chain cache), AMD's
    CRLs, and whether every pair's guest must send a report (``attest verify --snp require``;
    otherwise a report is appraised when sent, as ``--snp auto``)."""

    verifier: SnpVerifier = field(default_factory=SnpVerifier)
    crls: tuple[UnverifiedCrl, ...] = ()
    require: bool = False


def _fresh_events(appraised: Appraised) -> tuple[RuntimeEvent, ...] | None:
    """The host's verified runtime events, only when *this* appraisal verified its quote (our
    nonce, the enrolled AK) and replayed the runtime log into it. An incremental appraisal whose
    quote failed returns the memory it was given -- a runtime log verified against an *earlier*
    quote -- so the memory alone is not enough: ``result.clock`` is set only when this quote
    verified, and then the memory is this appraisal's."""
    rt = appraised.memory.runtime
    if appraised.result.clock is None or rt is None:
        return None
    return rt.log.events


def fresh_vouchings(appraised: Appraised) -> tuple[VtpmVouch, ...] | None:
    """The host's ``vtpm`` events of a fresh runtime log (``_fresh_events``), else None."""
    events = _fresh_events(appraised)
    return None if events is None else vouchings_of(events)


def fresh_chips(appraised: Appraised) -> tuple[bytes, ...] | None:
    """The host's ``snp-host`` chip ids of a fresh runtime log (``_fresh_events``: the same
    rule as ``fresh_vouchings``), else None -- a guest without a vTPM is then not vouched for."""
    events = _fresh_events(appraised)
    return None if events is None else host_chips_of(events)


@dataclass(frozen=True, slots=True)
class PairRound:
    """One poll of a pair (``attest.verifier.fleet.poller``): its challenge, what the layers
    answered, and the registry the guest is appraised under."""

    pe: PairEnrollment
    challenge: bytes
    digest: bytes | None  # the guest's evidence the host nonce commits to (guest_evidence_of)
    now: datetime
    guest_registry: VerifiedRegistry | None
    host: Appraised | None  # the host's appraisal (None: the appraiser raised)
    host_r: AppraisalResult  # its result, or could-not-appraise
    guest_doc: Mapping[str, Any] | None  # the guest's evidence as received
    guest_tls_binding: bytes | None  # the TLS key the guest's answer came over (no vTPM)


def vtpm_pair(
    r: PairRound,
    guest: Enrollment,
    guest_r: AppraisalResult,
    snp: SnpCollateral,
    *,
    platform: str | None,
) -> PairResult:
    """A pair whose guest has a vTPM: vouched for by the host's fresh ``vtpm`` events, with an
    SEV-SNP layer when the guest sends a report (or ``snp.require``)."""
    vouchings = None if r.host is None else fresh_vouchings(r.host)
    layer = guest_snp_layer(
        r.guest_doc,
        require=snp.require,
        node_id=guest.node_id,
        nonce=guest_nonce(r.challenge),
        ak_public=guest.ak_public,
        verifier=snp.verifier,
        registry=r.guest_registry,
        crls=snp.crls,
        platform=platform,
        now=r.now,
    )
    return appraise_pair(
        r.host_r,
        guest_r,
        vouchings,
        GuestIdentity(r.pe.guest_id, guest.ek_sha256),
        challenge=r.challenge,
        guest_evidence=r.digest,
        snp=layer,
    )


def snp_only_pair(r: PairRound, snp: SnpCollateral, *, platform: str | None) -> PairResult:
    """A pair whose guest has no vTPM (``attest verify --host --no-guest-vtpm``): its SEV-SNP
    report, always required (whatever ``snp.require``), bound to the guest nonce and the TLS key
    its answer came over (b"": plain HTTP), and vouched for by the chip the host's fresh runtime
    log names (``fresh_chips``)."""
    pe = r.pe
    chips = None if r.host is None else fresh_chips(r.host)
    nonce = guest_nonce(r.challenge)
    layer = guest_snp_layer(
        r.guest_doc,
        require=True,
        node_id=pe.node_id,
        nonce=nonce,
        ak_public=None,
        verifier=snp.verifier,
        registry=r.guest_registry,
        crls=snp.crls,
        platform=platform,
        now=r.now,
        host_chips=HostChips(r.host_r.node_id or pe.host.node_id, chips),
        peer_binding=r.guest_tls_binding or b"",
    )
    if layer is None:  # no document: the poller counts such a guest as not answering
        layer = unappraisable(pe.node_id, "the guest sent no evidence", nonce=nonce, now=r.now)
    return appraise_pair(
        r.host_r,
        None,
        None,
        GuestIdentity(pe.guest_id, None),
        challenge=r.challenge,
        guest_evidence=r.digest,
        snp=layer,
    )


def layer_json(result: AppraisalResult, url: str) -> dict[str, Any]:
    s = summarize(result)
    return {
        "node_id": result.node_id,
        "url": url,
        "verdict": s.status,
        "attest_verdict": result.verdict.value,
        "explanation": s.explanation,
        "first_divergence": s.first_divergence,
        "release": s.release,
        "claims": result.trustworthiness_vector,
    }


def pair_layers(pair: PairResult, host_url: str, guest_url: str) -> dict[str, Any]:
    """What the fleet stores of a pair besides its verdict: each layer's verdict and
    explanation (``host``, ``guest``; with an SEV-SNP layer ``host``, ``guest-snp``,
    ``guest-vtpm``; a guest without a vTPM: ``host``, ``guest-snp``), which layer failed, and
    the host-vouch finding."""
    layers = {
        name: layer_json(r, host_url if name == HOST else guest_url)
        for name, r in pair.layers.items()
    }
    return {"failed_layer": pair.failed_layer, "vouch": pair.vouch.to_json(), **layers}


def pair_explanation(pair: PairResult) -> str:
    """The pair's first divergence (naming the layer), then the layers' other findings."""
    reasons = [pair.first_divergence] if pair.first_divergence else []
    for name, r in pair.layers.items():
        for e in r.explanations:
            line = f"{name} layer ({r.node_id or '?'}): {e}"
            if line not in reasons:
                reasons.append(line)
    return "; ".join(reasons) or f"{pair.verdict.value}: every check passed on both layers"
