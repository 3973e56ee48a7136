"""The appraisal itself: ``appraise``, ``appraise_incremental`` and their result
(``attest.appraisal``'s face, whose docstring describes it, re-exports these)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.appraisal.checks import DEFAULT_APPRAISAL_POLICY, AppraisalPolicy
from attest.appraisal.claims import (
    NO_CLAIM,
    UNEXPECTED_EVIDENCE,
    UNRECOGNIZED_INSTANCE,
    UNTRUSTWORTHY_INSTANCE,
    VERIFIER_MALFUNCTION,
    Claim,
    ClaimResult,
    Finding,
    Tier,
    Verdict,
    claim_results,
    first_divergence,
    verdict_of,
)
from attest.appraisal.history import next_continuity, reset_notes
from attest.appraisal.memory import Continuity, FirmwareReplayCache, NodeMemory
from attest.appraisal.rules import DEFAULT_POLICY_ID, DEFAULT_RULES, VerifierRules
from attest.appraisal.stages import AppraisalContext, StaleMemory, establish
from attest.enroll import Enrollment
from attest.errors import EvidenceFormatError
from attest.manifest.evaluate import ReleaseDecision
from attest.manifest.model import VerifiedRegistry, format_time
from attest.model import PcrSelection
from attest.tpmstruct import ClockInfo

# --- the result ------------------------------------------------------------------------------


# The finding values ``explanations`` names: a tier worse than affirming (32..127), a verifier
# malfunction, unexpected evidence.
_EXPLAINED = frozenset(
    v
    for v in range(VERIFIER_MALFUNCTION, 128)
    if Tier.of(v) > Tier.AFFIRMING or v in (VERIFIER_MALFUNCTION, UNEXPECTED_EVIDENCE)
)


@dataclass(frozen=True, slots=True)
class AppraisalResult:
    """The decision about one node. ``to_json`` is the stable machine form (the fleet service
    and ``attest verify --json`` print it); ``attest.appraisal.ear`` turns it into a signed EAR."""

    node_id: str
    verdict: Verdict
    claims: tuple[ClaimResult, ...]  # one per Claim, in Claim order
    findings: tuple[Finding, ...]  # every finding, in check order
    first_divergence: str | None
    policy_id: str
    nonce: bytes
    appraised_at: datetime
    clock: ClockInfo | None = None  # the verified quote's clock: the next appraisal's previous
    release: ReleaseDecision | None = None
    platform_id: str | None = None
    notes: tuple[str, ...] = ()
    quirks: tuple[str, ...] = ()
    # What the verifier stores for the next appraisal (None: keep what it had).
    continuity: Continuity | None = None
    enrollment: str | None = None  # the enrollment's strength (attest.enroll.EnrollmentStrength)

    @property
    def status(self) -> str:
        """The EAR ``ear.status``: affirming, warning, contraindicated or none."""
        return self.verdict.ear_status

    @property
    def alarm(self) -> bool:
        return self.verdict is Verdict.ALARM

    def claim(self, claim: Claim) -> ClaimResult:
        for c in self.claims:
            if c.claim is claim:
                return c
        raise KeyError(claim)

    @property
    def trustworthiness_vector(self) -> dict[str, int]:
        """The AR4SI vector: claims that were made (value ≠ 0), by EAR name."""
        return {c.claim._value_: c.value for c in self.claims if c.value != NO_CLAIM}

    @property
    def explanations(self) -> tuple[str, ...]:
        """One sentence per finding that is not affirming, in check order."""
        return tuple(f.explanation for f in self.findings if f.value in _EXPLAINED)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "verdict": self.verdict._value_,
            "status": self.status,
            "trustworthiness_vector": self.trustworthiness_vector,
            "claims": {c.claim._value_: c.to_json() for c in self.claims},
            "first_divergence": self.first_divergence,
            "explanations": list(self.explanations),
            "findings": [f.to_json() for f in self.findings],
            "policy_id": self.policy_id,
            "nonce": self.nonce.hex(),
            "appraised_at": format_time(self.appraised_at),
            "clock": None
            if self.clock is None
            else {
                "clock_ms": self.clock.clock,
                "reset_count": self.clock.reset_count,
                "restart_count": self.clock.restart_count,
                "safe": self.clock.safe,
            },
            "release": None if self.release is None else self.release.to_json(),
            "platform_id": self.platform_id,
            "notes": list(self.notes),
            "quirks": list(self.quirks),
            "enrollment": self.enrollment,
            "continuity": None if self.continuity is None else self.continuity.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Appraised:
    """``appraise_incremental``'s answer. ``complete`` False: the logs were asked for from
    offsets that no longer apply (the TPM was reset, a log was rotated or does not continue
    what is held, or a held part no longer replays): ``result`` is only a placeholder and the
    verifier must challenge again with ``memory`` (which holds no logs) -- that full appraisal
    is the one to keep."""

    result: AppraisalResult
    memory: NodeMemory
    complete: bool = True


def _summarise(
    findings: Sequence[Finding],
    *,
    node_id: str,
    nonce: bytes,
    now: datetime,
    policy_id: str,
    forced: Verdict | None = None,
    clock: ClockInfo | None = None,
    release: ReleaseDecision | None = None,
    platform_id: str | None = None,
    notes: Sequence[str] = (),
    quirks: Sequence[str] = (),
    continuity: Continuity | None = None,
    enrollment: str | None = None,
) -> AppraisalResult:
    claims = claim_results(findings)
    verdict = forced if forced is not None else verdict_of(claims)
    return AppraisalResult(
        node_id=node_id,
        verdict=verdict,
        claims=claims,
        findings=tuple(findings),
        first_divergence=first_divergence(findings, verdict),
        policy_id=policy_id,
        nonce=nonce,
        appraised_at=now,
        clock=clock,
        release=release,
        platform_id=platform_id,
        notes=tuple(notes),
        quirks=tuple(quirks),
        continuity=continuity,
        enrollment=enrollment,
    )


def _identity_result(
    node_id: str,
    finding: Finding,
    *,
    nonce: bytes,
    now: datetime,
    policy_id: str,
    forced: Verdict | None = None,
) -> AppraisalResult:
    """The result of one instance-identity finding made without appraising any evidence."""
    return _summarise(
        [finding], node_id=node_id, nonce=nonce, now=now, policy_id=policy_id, forced=forced
    )


def result_of(
    findings: Sequence[Finding],
    *,
    node_id: str,
    nonce: bytes,
    now: datetime,
    policy_id: str = DEFAULT_POLICY_ID,
    notes: Sequence[str] = (),
) -> AppraisalResult:
    """The result of findings made outside ``appraise`` (``attest.appraisal.snp``): claims and
    verdict from the findings, as ``appraise`` makes them."""
    return _summarise(
        findings, node_id=node_id, nonce=nonce, now=now, policy_id=policy_id, notes=notes
    )


def unappraisable(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when there is no evidence to appraise (node unreachable, malformed answer)."""
    finding = Finding(Claim.INSTANCE_IDENTITY, NO_CLAIM, "evidence", reason)
    return _identity_result(
        node_id, finding, nonce=nonce, now=now, policy_id=policy_id, forced=Verdict.UNAPPRAISABLE
    )


def enrollment_refused(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when enrolling the node failed (EK chain, AK attributes, activation)."""
    why = f"enrollment refused: {reason}"
    finding = Finding(Claim.INSTANCE_IDENTITY, UNRECOGNIZED_INSTANCE, "enrollment", why)
    return _identity_result(node_id, finding, nonce=nonce, now=now, policy_id=policy_id)


def identity_alarm(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when the node's AK or EK is not the enrolled one (found before a challenge)."""
    finding = Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "identity", reason)
    return _identity_result(
        node_id, finding, nonce=nonce, now=now, policy_id=policy_id, forced=Verdict.ALARM
    )


def with_findings(
    result: AppraisalResult, findings: Sequence[Finding], *, first: bool = False
) -> AppraisalResult:
    """``result`` with more findings (before its own when ``first``), claims and verdict
    recomputed; an alarm or an unappraisable verdict stays what it was
    (``attest.appraisal.pair``)."""
    forced = result.verdict if result.verdict in (Verdict.ALARM, Verdict.UNAPPRAISABLE) else None
    both = (*findings, *result.findings) if first else (*result.findings, *findings)
    return _summarise(
        both,
        node_id=result.node_id,
        nonce=result.nonce,
        now=result.appraised_at,
        policy_id=result.policy_id,
        forced=forced,
        clock=result.clock,
        release=result.release,
        platform_id=result.platform_id,
        notes=result.notes,
        quirks=result.quirks,
        continuity=result.continuity,
        enrollment=result.enrollment,
    )


# --- the entry points ------------------------------------------------------------------------


def appraise(
    evidence_doc: object,
    *,
    enrollment: Enrollment,
    nonce: bytes,
    selection: PcrSelection,
    registry: VerifiedRegistry | None,
    platform_id: str | None,
    previous: ClockInfo | None,
    tls_binding: bytes | None,
    now: datetime,
    audit_entries: Sequence[Mapping[str, Any]] | None = None,
    identity: Mapping[str, Any] | None = None,
    policy: AppraisalPolicy = DEFAULT_APPRAISAL_POLICY,
    policy_id: str | None = None,
    rules: VerifierRules = DEFAULT_RULES,
    continuity: Continuity | None = None,
) -> AppraisalResult:
    """Appraise one evidence document (``POST /v1/evidence``'s answer) against the enrollment,
    the challenge and the verified registry. Never raises for evidence problems.

    ``selection``: exactly what was asked for (the quote must cover it). ``previous``: the
    clock of the node's last verified quote (counters must not go backwards). ``tls_binding``:
    sha256 of the SPKI of the TLS key the verifier connected to, when over TLS.
    ``audit_entries``: the operator audit entries (``GET /v1/audit``) when fetched over an
    authenticated channel. ``identity``: the node's ``/v1/identity`` answer of this contact,
    to compare its AK / EK with the enrollment. ``now``: the verifier's time, taken once.
    ``rules``: the verifier's rules (``attest.appraisal.rules``; their id is the result's
    ``policy_id`` unless one is given). ``continuity``: what this verifier stored after its
    last appraisal of the node (``result.continuity`` is the next one to store).
    """
    return appraise_incremental(
        evidence_doc,
        memory=NodeMemory(),
        enrollment=enrollment,
        nonce=nonce,
        selection=selection,
        registry=registry,
        platform_id=platform_id,
        previous=previous,
        tls_binding=tls_binding,
        now=now,
        audit_entries=audit_entries,
        identity=identity,
        policy=policy,
        policy_id=policy_id,
        rules=rules,
        continuity=continuity,
    ).result


def appraise_incremental(
    evidence_doc: object,
    *,
    memory: NodeMemory,
    enrollment: Enrollment,
    nonce: bytes,
    selection: PcrSelection,
    registry: VerifiedRegistry | None,
    platform_id: str | None,
    previous: ClockInfo | None,
    tls_binding: bytes | None,
    now: datetime,
    audit_entries: Sequence[Mapping[str, Any]] | None = None,
    identity: Mapping[str, Any] | None = None,
    policy: AppraisalPolicy = DEFAULT_APPRAISAL_POLICY,
    policy_id: str | None = None,
    rules: VerifierRules = DEFAULT_RULES,
    continuity: Continuity | None = None,
    cache: FirmwareReplayCache | None = None,
) -> Appraised:
    """``appraise`` for a verifier that challenges a node again and again: ``memory`` is what
    the previous appraisal of this node returned (``NodeMemory()`` the first time), and the
    evidence's logs were asked for with ``memory.log_request()`` (the audit entries from
    ``memory.audit_next``). Only what is new is parsed and checked; the result is the one
    ``appraise`` gives for the whole logs (docs/fleet.md argues why: the quoted PCRs commit to
    every record held). When the evidence does not continue what is held (TPM reset, log
    rotated, a held part no longer replays) the answer is ``complete=False`` and a memory
    without logs: challenge again for the whole logs. ``cache``: firmware logs and replays
    shared by all the nodes of this verifier (``FirmwareReplayCache``; results do not depend
    on it). Never raises for evidence problems."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    policy_id = rules.policy_id if policy_id is None else policy_id
    if not isinstance(evidence_doc, Mapping):
        reason = "evidence is not a JSON object"
        return _unappraisable(
            enrollment.node_id, reason, memory, nonce=nonce, now=now, policy_id=policy_id
        )
    try:
        ctx, memory = establish(
            evidence_doc,
            enrollment=enrollment,
            nonce=nonce,
            selection=selection,
            registry=registry,
            platform_id=platform_id,
            previous=previous,
            tls_binding=tls_binding,
            now=now,
            audit_entries=audit_entries,
            identity=identity,
            memory=memory,
            cache=cache,
            rules=rules,
            continuity=continuity,
        )
    except StaleMemory as exc:
        reason = f"the logs must be fetched again: {exc}"
        return _unappraisable(
            enrollment.node_id,
            reason,
            memory.forget_logs(),
            nonce=nonce,
            now=now,
            policy_id=policy_id,
            complete=False,
        )
    except EvidenceFormatError as exc:
        reason = f"malformed evidence: {exc}"
        return _unappraisable(
            enrollment.node_id, reason, memory, nonce=nonce, now=now, policy_id=policy_id
        )
    if isinstance(ctx.evidence_error, EvidenceFormatError):
        reason = f"malformed evidence: {ctx.evidence_error}"
        return _unappraisable(
            ctx.node_id, reason, memory, nonce=nonce, now=now, policy_id=policy_id
        )
    return Appraised(_decide(ctx, policy, nonce=nonce, policy_id=policy_id), memory)


def _unappraisable(
    node_id: str,
    reason: str,
    memory: NodeMemory,
    *,
    nonce: bytes,
    now: datetime,
    policy_id: str,
    complete: bool = True,
) -> Appraised:
    result = unappraisable(node_id, reason, nonce=nonce, now=now, policy_id=policy_id)
    return Appraised(result, memory, complete)


def _decide(
    ctx: AppraisalContext, policy: AppraisalPolicy, *, nonce: bytes, policy_id: str
) -> AppraisalResult:
    """The policy's findings about what the stages established, summarised."""
    findings = policy.evaluate(ctx)
    fw = ctx.firmware
    ok_identity = ctx.identity_alarm is None and ctx.evidence is not None
    return _summarise(
        findings,
        node_id=ctx.node_id,
        nonce=nonce,
        now=ctx.now,
        policy_id=policy_id,
        forced=Verdict.ALARM if ctx.identity_alarm is not None else None,
        clock=None if ctx.evidence is None else ctx.evidence.quote.clock,
        release=ctx.release,
        platform_id=ctx.platform_id,
        notes=(*ctx.notes, *reset_notes(ctx)),
        quirks=() if fw is None else tuple(f"{q.name}@{q.version}" for q in fw.quirks),
        # An alarm (another AK/EK) must not move what is remembered of the enrolled node.
        continuity=next_continuity(ctx, findings) if ok_identity else ctx.previous,
        enrollment=ctx.enrollment.strength.value,
    )
