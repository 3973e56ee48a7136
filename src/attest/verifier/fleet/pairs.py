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
``attest verify --host`` does.

This module holds what the fleet stores and shows of a pair (the per-layer summaries; the
enrollment is ``attest.verifier.fleet.enrollment.PairEnrollment``); the pair logic itself is
``attest.appraisal.pair``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attest.appraisal import AppraisalResult, Appraised
from attest.appraisal.pair import HOST, PairResult, vouchings_of
from attest.runtime import VtpmVouch
from attest.snp.certs import UnverifiedCrl
from attest.snp.verify import SnpVerifier
from attest.verifier.fleet.appraiser import summarize


@dataclass(frozen=True)
class SnpCollateral:
    """What the fleet checks a confidential guest's SEV-SNP report with (docs/snp.md, "One
    verdict for host and guest"): the verifier (the pinned AMD roots, its chain cache), AMD's
    CRLs, and whether every pair's guest must send a report (``attest verify --snp require``;
    otherwise a report is appraised when sent, as ``--snp auto``)."""

    verifier: SnpVerifier = field(default_factory=SnpVerifier)
    crls: tuple[UnverifiedCrl, ...] = ()
    require: bool = False


def fresh_vouchings(appraised: Appraised) -> tuple[VtpmVouch, ...] | None:
    """The host's ``vtpm`` events, only when *this* appraisal verified its quote (our nonce, the
    enrolled AK) and replayed the runtime log into it. An incremental appraisal whose quote
    failed returns the memory it was given -- a runtime log verified against an *earlier*
    quote -- so the memory alone is not enough: ``result.clock`` is set only when this quote
    verified, and then the memory is this appraisal's."""
    rt = appraised.memory.runtime
    if appraised.result.clock is None or rt is None:
        return None
    return vouchings_of(rt.log.events)


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
    ``guest-vtpm``), which layer failed, and the host-vouch finding."""
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
