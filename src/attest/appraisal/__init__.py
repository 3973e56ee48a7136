"""Appraisal of one node's evidence: verified facts in, an AR4SI-shaped decision out. Pure.

``appraise(evidence_doc, *, enrollment, nonce, ...) -> AppraisalResult`` never raises for a
problem with the evidence: every problem becomes a claim value and a human sentence, and the
first one in check order is ``first_divergence``. It raises only for programming errors
(``ValueError`` / ``TypeError`` for arguments of the wrong shape).

Two layers:

1. *verification* (``_establish``): the evidence is parsed and checked in the spec's order --
   AK and EK against the enrollment (a change is an alarm, never a silent re-enrollment); the
   quote (signature, Merkle inclusion of our nonce, PCR selection, digest, clock and counters
   against the previous quote: ``attest.evidence.verify_evidence``); the firmware event log
   replayed into the quoted PCRs and its facts; the runtime log replayed into the runtime PCR;
   the audit chain against the runtime log's anchors; the release the node runs, found in the
   verified registry by its authenticated dm-verity root hash. The outcome is an
   ``AppraisalContext``: verified values, or the error that stopped each stage.
2. *policy* (``AppraisalPolicy``, one method ``evaluate(ctx) -> tuple[Finding, ...]``,
   combinable with ``AllOf`` / ``AnyOf``): reads the context and says, per AR4SI claim
   (draft-ietf-rats-ar4si §2.3), what the verifier believes and why.

A claim's value is the worst of its findings; the overall status is the worst claim (the AR4SI
tiers: affirming 2-31 < warning 32-95 < contraindicated 96-127).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from attest.appraisal.claims import (
    APPROVED_BOOT,
    APPROVED_CONFIG,
    APPROVED_FILES,
    APPROVED_RUNTIME,
    CONTRAINDICATED_FILES,
    CONTRAINDICATED_HARDWARE,
    CONTRAINDICATED_RUNTIME,
    CRYPTO_VALIDATION_FAILED,
    GENUINE_HARDWARE,
    NO_CLAIM,
    TRUSTWORTHY_INSTANCE,
    UNEXPECTED_EVIDENCE,
    UNRECOGNIZED_FILES,
    UNRECOGNIZED_HARDWARE,
    UNRECOGNIZED_INSTANCE,
    UNRECOGNIZED_RUNTIME,
    UNSAFE_CONFIG,
    UNSAFE_HARDWARE,
    UNSAFE_RUNTIME,
    UNSUPPORTABLE_CONFIG,
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
from attest.appraisal.memory import FirmwareReplayCache, NodeMemory, firmware_key
from attest.audit import AuditEntry, parse_entry, verify_audit_chain, verify_audit_chain_from
from attest.enroll import Enrollment
from attest.errors import (
    AttestError,
    ClockError,
    EvidenceFormatError,
    KeyPolicyError,
    NonceError,
    PcrDigestError,
    PcrSelectionError,
    ReplayError,
    SignatureError,
    VerificationError,
)
from attest.eventlog.cel import CelRecord, loads_cel
from attest.eventlog.facts import BootFacts, facts, load_options_digest, verity_root_hashes
from attest.eventlog.parse import UnverifiedEventLog, parse_event_log
from attest.eventlog.replay import VerifiedEventLog, replay
from attest.evidence import VerifiedEvidence, unb64, verify_evidence
from attest.manifest.evaluate import ReleaseDecision, ReleaseStatus, evaluate_release
from attest.manifest.model import PlatformReference, Release, VerifiedRegistry, format_time
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.runtime import (
    KIND_CONFIG,
    KIND_POLICY,
    ConfigDigest,
    MacPolicy,
    RuntimeEvent,
    RuntimeReplay,
    VerifiedRuntimeLog,
    VerityDevice,
    verify_runtime_log_from,
)
from attest.tpmstruct import ClockInfo, parse_public

DEFAULT_POLICY_ID = "attest/default@1"
MAX_RUNTIME_RECORDS = 100_000
MAX_AUDIT_ENTRIES = 100_000

# --- what the verification stages established ------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppraisalContext:
    """Verified values (or the error that stopped each stage): what policies read."""

    node_id: str
    enrollment: Enrollment
    registry: VerifiedRegistry | None
    platform_id: str | None
    now: datetime
    identity_alarm: str | None = None
    evidence: VerifiedEvidence | None = None
    evidence_error: AttestError | None = None
    firmware: VerifiedEventLog | None = None
    firmware_error: AttestError | None = None
    boot: BootFacts | None = None
    runtime: VerifiedRuntimeLog | None = None
    runtime_error: AttestError | None = None
    audit: tuple[AuditEntry, ...] | None = None
    audit_error: AttestError | None = None
    cmdline: str | None = None  # the kernel command line, authenticated by a measurement
    verity_root_hashes: tuple[tuple[str, bytes], ...] = ()  # (source, root hash), authenticated
    claimed_version: str | None = None  # the image version the node names (not authenticated)
    release: ReleaseDecision | None = None  # the release the authenticated root hash names
    reference_release: Release | None = None  # the release whose expected PCRs apply
    notes: tuple[str, ...] = ()

    @property
    def quoted(self) -> PcrValues | None:
        return None if self.evidence is None else self.evidence.quote.pcrs


class AppraisalPolicy(Protocol):
    """Appraisal policy: one method, reading verified facts, returning findings."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]: ...


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every policy applies; the findings of all of them count."""

    policies: tuple[AppraisalPolicy, ...]

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        return tuple(f for p in self.policies for f in p.evaluate(ctx))


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Alternatives: the first policy whose findings are all affirming (or carry no claim)
    wins; if none does, the alternative whose worst finding is least severe is reported."""

    policies: tuple[AppraisalPolicy, ...]

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        best: tuple[Finding, ...] | None = None
        best_tier = Tier.CONTRAINDICATED + 1
        for p in self.policies:
            found = p.evaluate(ctx)
            worst = max((f.tier for f in found), default=Tier.NONE)
            if worst <= Tier.AFFIRMING:
                return found
            if worst < best_tier:
                best, best_tier = found, worst
        return best or ()


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


# --- the result ------------------------------------------------------------------------------


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
        return {c.claim.value: c.value for c in self.claims if c.value != NO_CLAIM}

    @property
    def explanations(self) -> tuple[str, ...]:
        """One sentence per finding that is not affirming, in check order."""
        return tuple(
            f.explanation
            for f in self.findings
            if f.tier > Tier.AFFIRMING or f.value in (VERIFIER_MALFUNCTION, UNEXPECTED_EVIDENCE)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "verdict": self.verdict.value,
            "status": self.status,
            "trustworthiness_vector": self.trustworthiness_vector,
            "claims": {c.claim.value: c.to_json() for c in self.claims},
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
        }


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
    )


def unappraisable(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when there is no evidence to appraise (node unreachable, malformed answer)."""
    return _summarise(
        [Finding(Claim.INSTANCE_IDENTITY, NO_CLAIM, "evidence", reason)],
        node_id=node_id,
        nonce=nonce,
        now=now,
        policy_id=policy_id,
        forced=Verdict.UNAPPRAISABLE,
    )


def enrollment_refused(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when enrolling the node failed (EK chain, AK attributes, activation)."""
    return _summarise(
        [
            Finding(
                Claim.INSTANCE_IDENTITY,
                UNRECOGNIZED_INSTANCE,
                "enrollment",
                f"enrollment refused: {reason}",
            )
        ],
        node_id=node_id,
        nonce=nonce,
        now=now,
        policy_id=policy_id,
    )


def identity_alarm(
    node_id: str, reason: str, *, nonce: bytes, now: datetime, policy_id: str = DEFAULT_POLICY_ID
) -> AppraisalResult:
    """The result when the node's AK or EK is not the enrolled one (found before a challenge)."""
    return _summarise(
        [Finding(Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "identity", reason)],
        node_id=node_id,
        nonce=nonce,
        now=now,
        policy_id=policy_id,
        forced=Verdict.ALARM,
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
    )


# --- verification stages ---------------------------------------------------------------------


def _short(h: bytes) -> str:
    return h.hex()


def compare_identity(
    enrollment: Enrollment,
    *,
    ak_public: bytes | None,
    ek_sha256: bytes | None,
    node_id: str | None = None,
    ek_presented: bool = True,
) -> str | None:
    """The alarm sentence when a presented AK / EK / node id is not the enrolled one.
    ``ek_presented=False``: the document carries no EK to compare (the evidence document)."""
    if ak_public is not None and not hmac.compare_digest(ak_public, enrollment.ak_public):
        try:
            got = parse_public(ak_public).name.hex()
        except AttestError:
            got = "an unparseable key"
        return (
            f"ALARM: the node presents AK {got}, not the AK {enrollment.ak_name.hex()} "
            f"enrolled {enrollment.enrolled_at}: another TPM, or the key was replaced "
            "(re-enroll only by operator action)"
        )
    if enrollment.ek_sha256 is not None and ek_presented:
        if ek_sha256 is None:
            return (
                "ALARM: the node no longer presents the EK it was enrolled with "
                f"(sha256 {enrollment.ek_sha256.hex()})"
            )
        if not hmac.compare_digest(ek_sha256, enrollment.ek_sha256):
            return (
                f"ALARM: the node presents EK sha256 {ek_sha256.hex()}, not the enrolled "
                f"{enrollment.ek_sha256.hex()}: another TPM"
            )
    if node_id is not None and enrollment.node_id and node_id != enrollment.node_id:
        return (
            f"ALARM: the node now calls itself {node_id[:64]!r}, enrolled as {enrollment.node_id!r}"
        )
    return None


def identity_of(doc: Mapping[str, Any]) -> tuple[bytes | None, bytes | None, str | None]:
    """(AK TPM2B_PUBLIC, sha256 of the EK TPMT_PUBLIC, node id) from a ``/v1/identity``
    answer; raises ``EvidenceFormatError``."""
    ak_doc = doc.get("ak")
    ak = None
    if isinstance(ak_doc, Mapping):
        ak = unb64(ak_doc.get("public"), "ak.public", limit=2048)
    ek_doc = doc.get("ek")
    ek = None
    if isinstance(ek_doc, Mapping):
        ek = hashlib.sha256(
            parse_public(unb64(ek_doc.get("public"), "ek.public", limit=2048)).raw
        ).digest()
    node_id = doc.get("node_id")
    return ak, ek, node_id if isinstance(node_id, str) else None


def _runtime_records(doc: object, *, resume: int = 0) -> tuple[int, tuple[CelRecord, ...]]:
    """(start, records) of a ``runtime_log`` answer: from record 0, or from ``resume`` (the
    records the verifier holds) when it asked for the log from there."""
    if not isinstance(doc, Mapping):
        raise EvidenceFormatError("runtime_log is not an object")
    records = doc.get("records")
    start = doc.get("start", 0)
    incremental = resume > 0 and type(start) is int and start == resume
    held = resume if incremental else 0
    if not isinstance(records, list) or held + len(records) > MAX_RUNTIME_RECORDS:
        raise EvidenceFormatError(
            f"runtime_log.records is not a list of at most {MAX_RUNTIME_RECORDS} records"
        )
    if start != 0 and not incremental:
        raise EvidenceFormatError("runtime_log does not start at record 0")
    if not records:
        return held, ()
    # loads_cel is the one strict CEL reader; it takes text, so the records go back to JSON.
    return held, loads_cel(json.dumps(records))


def _authenticated_cmdline(doc: Mapping[str, Any], boot: BootFacts | None) -> str | None:
    """The kernel command line, only when a verified measurement vouches for it: a command
    line event whose data matched its digest (GRUB, systemd-boot, systemd-stub), or the one the
    node reports (``boot.cmdline``) when its UTF-16LE form is the Linux EFI stub's verified PCR
    9 LoadOptions digest."""
    if boot is None:
        return None
    if boot.kernel_cmdlines:
        return boot.kernel_cmdlines[-1].text
    reported = doc.get("boot")
    text = reported.get("cmdline") if isinstance(reported, Mapping) else None
    if not isinstance(text, str) or len(text) > 4096:
        return None
    for m in boot.load_options:
        for alg, digest in m.digests.items():
            try:
                h = HashAlg(alg)
            except ValueError:
                continue
            if hmac.compare_digest(load_options_digest(text, h), digest):
                return text
    return None


class _Stale(Exception):  # noqa: N818 -- control flow inside _establish, never escapes it
    """A log was asked for incrementally and what came back cannot continue what is held."""


def _logged_pcrs(log: UnverifiedEventLog, held: NodeMemory) -> frozenset[int]:
    if log is held.firmware_log:
        return held.firmware_pcrs
    return frozenset(e.pcr for e in log.events)


def _establish(
    evidence_doc: Mapping[str, Any],
    *,
    enrollment: Enrollment,
    nonce: bytes,
    selection: PcrSelection,
    registry: VerifiedRegistry | None,
    platform_id: str | None,
    previous: ClockInfo | None,
    tls_binding: bytes | None,
    now: datetime,
    audit_entries: Sequence[Mapping[str, Any]] | None,
    identity: Mapping[str, Any] | None,
    memory: NodeMemory,
    cache: FirmwareReplayCache | None,
) -> tuple[AppraisalContext, NodeMemory]:
    """The verification stages. Raises ``_Stale`` when ``memory`` held a log and the evidence
    does not continue it (the caller challenges again with no memory)."""
    node_id = evidence_doc.get("node_id")
    ctx = AppraisalContext(
        node_id=node_id if isinstance(node_id, str) else enrollment.node_id,
        enrollment=enrollment,
        registry=registry,
        platform_id=platform_id,
        now=now,
    )
    notes: list[str] = []
    if memory.ak is None or not hmac.compare_digest(memory.ak_public, enrollment.ak_public):
        memory = NodeMemory(ak_public=enrollment.ak_public, ak=enrollment.ak)

    # 1. identity: the AK in the evidence (and the identity document, when given) must be the
    #    enrolled one. A different key is an alarm; the quote is not even tried with it.
    ak_doc = evidence_doc.get("ak")
    ak = (
        unb64(ak_doc.get("public"), "ak.public", limit=2048)
        if isinstance(ak_doc, Mapping)
        else None
    )
    alarm = compare_identity(enrollment, ak_public=ak, ek_sha256=None, ek_presented=False)
    if alarm is None and identity is not None:
        i_ak, i_ek, i_node = identity_of(identity)
        alarm = compare_identity(enrollment, ak_public=i_ak, ek_sha256=i_ek, node_id=i_node)
    if alarm is not None:
        return _replace(ctx, identity_alarm=alarm), memory

    # 2. the quote: signature by the enrolled AK, Merkle inclusion of our nonce, selection,
    #    digest, clock (attest.evidence / attest.quote give the order and spec sections).
    try:
        assert memory.ak is not None
        ve = verify_evidence(
            evidence_doc,
            nonce=nonce,
            ak=memory.ak,
            selection=selection,
            tls_binding=tls_binding,
            previous=previous,
        )
    except VerificationError as exc:
        return _replace(ctx, evidence_error=exc), memory
    quoted = ve.quote.pcrs
    doc = evidence_doc
    # What is held was verified in one TPM reset epoch: PCRs are reset with the TPM, and the
    # node starts fresh logs. Another epoch voids it all (TPM 2.0 Part 1 §36.7: resetCount,
    # restartCount).
    clock = ve.quote.clock
    epoch = (clock.reset_count, clock.restart_count)
    if memory.epoch != epoch:
        if memory.holds_logs:
            raise _Stale(
                f"the TPM was reset or restarted (resetCount/restartCount {memory.epoch} → {epoch})"
            )
        memory = NodeMemory(ak_public=memory.ak_public, ak=memory.ak, epoch=epoch)

    # 3. firmware event log replayed into the quoted PCRs; facts from verified events only.
    #    Held: the log is immutable after boot, so it is fetched once; its replay is redone
    #    unless the quoted values it reads are the ones it was verified against.
    fw = boot = None
    fw_error: AttestError | None = None
    fw_doc = doc.get("firmware_log")
    held_fw = memory.firmware_log
    fw_memory: dict[str, Any] = {}  # none held
    if fw_doc is None:
        if held_fw is not None:
            raise _Stale("the node no longer serves the firmware event log held")
        notes.append("the node serves no firmware event log")
    else:
        try:
            if not isinstance(fw_doc, Mapping):
                raise EvidenceFormatError("firmware_log is not an object")
            start = fw_doc.get("start", 0)
            if held_fw is not None and type(start) is int and start == memory.firmware_size:
                if unb64(fw_doc.get("data"), "firmware_log.data"):
                    raise _Stale("the firmware event log grew after it was fetched")
                log, size, digest = held_fw, memory.firmware_size, memory.firmware_digest
            elif start != 0:
                raise EvidenceFormatError("firmware_log does not start at byte 0")
            else:
                data = unb64(fw_doc.get("data"), "firmware_log.data")
                size = len(data)
                if cache is not None:
                    digest, log = cache.parsed(data)
                else:
                    digest, log = b"", parse_event_log(data)
            logged = _logged_pcrs(log, memory)
            key = firmware_key(logged, quoted)
            if log is held_fw and key == memory.firmware_key and memory.firmware is not None:
                fw, boot = memory.firmware, memory.boot
            elif cache is not None:
                fw, boot = cache.replayed(digest, log, quoted, key)
            else:
                fw = replay(log, quoted)
                boot = facts(fw)
            fw_memory = {
                "firmware_size": size,
                "firmware_digest": digest,
                "firmware_log": log,
                "firmware_pcrs": logged,
                "firmware_key": key,
                "firmware": fw,
                "boot": boot,
            }
        except AttestError as exc:
            if held_fw is not None:
                raise _Stale(f"the firmware event log held: {exc}") from None
            fw_error = exc

    # 4. runtime log replayed into the runtime PCR: held, the new records only are checked and
    #    extend the running value, which must equal the quoted PCR (attest.runtime).
    runtime = None
    replayed: RuntimeReplay | None = None
    rt_error: AttestError | None = None
    rt_doc = doc.get("runtime_log")
    held_rt = memory.runtime
    if rt_doc is None:
        if held_rt is not None:
            raise _Stale("the node no longer serves the runtime log")
    else:
        resumed = False
        try:
            first, records = _runtime_records(rt_doc, resume=memory.runtime_next)
            resumed = first > 0
            replayed = verify_runtime_log_from(
                held_rt if resumed else None, records, quoted, pcr=enrollment.runtime_pcr
            )
            runtime = replayed.log
        except AttestError as exc:
            if resumed:
                raise _Stale(f"the runtime log from record {memory.runtime_next}: {exc}") from None
            rt_error = exc

    # 5. audit chain against the runtime log's anchors; held entries are not hashed again.
    audit = None
    audit_error: AttestError | None = None
    audit_held = memory.audit if replayed is not None else ()
    if audit_entries is not None and replayed is not None:
        resumed = False
        try:
            if len(audit_entries) > MAX_AUDIT_ENTRIES:
                raise EvidenceFormatError(f"more than {MAX_AUDIT_ENTRIES} audit entries")
            entries = [parse_entry(e) for e in audit_entries]
            resumed = bool(audit_held) and (not entries or entries[0].seq == audit_held[-1].seq + 1)
            if resumed and len(audit_held) + len(entries) > MAX_AUDIT_ENTRIES:
                raise EvidenceFormatError(f"more than {MAX_AUDIT_ENTRIES} audit entries")
            anchors = replayed.anchors
            # Entries recorded after the quote are not anchored in it yet: appraise the log up
            # to the newest entry the quoted runtime log anchors (an anchored entry missing
            # from the log still fails: truncation).
            newest = max((a.audit_seq for a in anchors), default=-1)
            later = [e for e in entries if e.seq > newest]
            if later:
                notes.append(f"{len(later)} audit entries newer than the quote are not appraised")
            anchored = [e for e in entries if e.seq <= newest]
            if resumed:
                audit = verify_audit_chain_from(audit_held, anchored, anchors)
            else:
                audit = verify_audit_chain(anchored, anchors)
            audit_held = audit
        except AttestError as exc:
            if resumed:
                raise _Stale(f"the audit entries from {audit_held[-1].seq + 1}: {exc}") from None
            audit_error = exc
            audit_held = ()
    next_memory = NodeMemory(
        ak_public=memory.ak_public,
        ak=memory.ak,
        epoch=memory.epoch,
        runtime=replayed,
        audit=audit_held,
        **fw_memory,
    )

    # 6. the release: named by an authenticated dm-verity root hash (runtime log verity-device
    #    events, then the verified kernel command line); the version the node claims is used
    #    only to pick expected PCRs when no authenticated root hash names a release.
    cmdline = _authenticated_cmdline(doc, boot)
    hashes: list[tuple[str, bytes]] = []
    if runtime is not None:
        hashes += [
            (f"runtime log event {e.recnum} (verity-device {e.detail.name})", e.detail.root_hash)
            for e in runtime.events
            if isinstance(e.detail, VerityDevice)
        ]
    if cmdline is not None:
        hashes += [(f"kernel command line {k}=", h) for k, h in verity_root_hashes(cmdline)]
    image = doc.get("image")
    claimed = image.get("version") if isinstance(image, Mapping) else None
    claimed = claimed if isinstance(claimed, str) and len(claimed) <= 128 else None
    decision = None
    reference = None
    if registry is not None:
        snap = registry.snapshot
        if hashes:
            decision = evaluate_release(registry, verity_root_hash=hashes[0][1], now=now)
        elif claimed is not None and claimed in snap.releases:
            rel = snap.releases[claimed]
            decision = evaluate_release(registry, artifact_sha256=rel.artifact_sha256, now=now)
            notes.append(
                f"no authenticated dm-verity root hash: release {claimed} is the "
                "version the node names"
            )
        reference = decision.release if decision is not None else None
        if reference is None and claimed is not None:
            reference = snap.releases.get(claimed)
    return _replace(
        ctx,
        evidence=ve,
        firmware=fw,
        firmware_error=fw_error,
        boot=boot,
        runtime=runtime,
        runtime_error=rt_error,
        audit=audit,
        audit_error=audit_error,
        cmdline=cmdline,
        verity_root_hashes=tuple(hashes),
        claimed_version=claimed,
        release=decision,
        reference_release=reference,
        notes=tuple(notes),
    ), next_memory


def _replace(ctx: AppraisalContext, **changes: Any) -> AppraisalContext:
    # The fresh context of _establish plus the stages' values (dataclasses.replace costs
    # ~20 µs a call on this hot path; a direct construction a few).
    return AppraisalContext(
        ctx.node_id, ctx.enrollment, ctx.registry, ctx.platform_id, ctx.now, **changes
    )


# --- the checks (policies) -------------------------------------------------------------------


def _pcr_line(pcr: int, what: str, expected: bytes, got: bytes) -> str:
    return f"PCR {pcr}: {what}: expected {_short(expected)}, quoted {_short(got)}"


@dataclass(frozen=True, slots=True)
class QuoteCheck:
    """instance-identity: the quote verifies with the enrolled AK, for our nonce, fresh."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.identity_alarm is not None:
            return (
                Finding(
                    Claim.INSTANCE_IDENTITY, UNTRUSTWORTHY_INSTANCE, "identity", ctx.identity_alarm
                ),
            )
        exc = ctx.evidence_error
        if exc is not None:
            if isinstance(exc, (SignatureError, KeyPolicyError)):
                value = CRYPTO_VALIDATION_FAILED
                what = "the quote is not signed by the enrolled AK"
            elif isinstance(exc, NonceError):
                value = UNTRUSTWORTHY_INSTANCE
                what = "the quote does not answer this challenge (stale or replayed)"
            elif isinstance(exc, ClockError):
                value = UNTRUSTWORTHY_INSTANCE
                what = "the quote is older than the node's previous quote (replayed)"
            elif isinstance(exc, (PcrSelectionError, PcrDigestError)):
                value = CRYPTO_VALIDATION_FAILED
                what = "the PCR values are not the ones the quote signs"
            else:
                value = UNTRUSTWORTHY_INSTANCE
                what = "the quote does not verify"
            check = exc.check if isinstance(exc, VerificationError) else "quote"
            return (
                Finding(
                    Claim.INSTANCE_IDENTITY,
                    value,
                    f"quote:{check}",
                    f"quote ({check}): {what}: {exc}",
                ),
            )
        if ctx.evidence is None:
            return ()
        e = ctx.enrollment
        how = "credential activation" if e.activated else "enrollment without activation"
        q = ctx.evidence.quote
        return (
            Finding(
                Claim.INSTANCE_IDENTITY,
                TRUSTWORTHY_INSTANCE,
                "quote",
                f"quote by the AK enrolled {e.enrolled_at} ({how}) answers this "
                f"challenge; resetCount {q.clock.reset_count}, clock {q.clock.clock} ms",
            ),
        )


@dataclass(frozen=True, slots=True)
class FirmwareReplayCheck:
    """executables (boot): the firmware event log replays into the quoted PCRs."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        exc = ctx.firmware_error
        if exc is not None:
            if isinstance(exc, ReplayError) and exc.invalid_pcrs:
                pcrs = ", ".join(f"{b}:{i}" for b, i in exc.invalid_pcrs[:8])
                text = f"firmware event log does not replay into quoted PCR(s) {pcrs}: {exc}"
            else:
                text = f"firmware event log: {exc}"
            return (
                Finding(Claim.EXECUTABLES, CONTRAINDICATED_RUNTIME, "firmware-replay", text),
                Finding(
                    Claim.HARDWARE,
                    UNSAFE_HARDWARE,
                    "firmware-replay",
                    "firmware measurements cannot be read: " + text,
                ),
            )
        if ctx.firmware is None:
            return ()
        fw = ctx.firmware
        q = f" (quirks tolerated: {', '.join(a.name for a in fw.quirks)})" if fw.quirks else ""
        return (
            Finding(
                Claim.EXECUTABLES,
                APPROVED_BOOT,
                "firmware-replay",
                f"firmware event log replays into the quoted PCRs{q}",
            ),
        )


@dataclass(frozen=True, slots=True)
class PlatformReferenceCheck:
    """hardware: quoted PCRs 0-7 equal the signed reference of the node's platform."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        quoted = ctx.quoted
        if quoted is None or ctx.registry is None or ctx.platform_id is None:
            return ()
        signed = ctx.registry.snapshot.platforms.get(ctx.platform_id)
        if signed is None:
            return (
                Finding(
                    Claim.HARDWARE,
                    UNRECOGNIZED_HARDWARE,
                    "platform",
                    f"platform {ctx.platform_id!r} is not in registry "
                    f"#{ctx.registry.snapshot.sequence}",
                ),
            )
        ref: PlatformReference = signed.reference
        compared = 0
        for alg, values in ref.pcrs.values.items():
            got = quoted.values.get(alg)
            if got is None:
                continue
            for pcr, want in sorted(values.items()):
                if pcr not in got:
                    continue
                compared += 1
                if not hmac.compare_digest(got[pcr], want):
                    what = f"platform firmware differs from reference {ref.platform_id}"
                    return (
                        Finding(
                            Claim.HARDWARE,
                            CONTRAINDICATED_HARDWARE,
                            "platform",
                            _pcr_line(pcr, what, want, got[pcr]),
                        ),
                    )
        if compared == 0:
            return ()
        if ref.example:
            return (
                Finding(
                    Claim.HARDWARE,
                    UNSAFE_HARDWARE,
                    "platform",
                    f"platform reference {ref.platform_id} is a placeholder "
                    "(example: true): nothing can be vouched for",
                ),
            )
        return (
            Finding(
                Claim.HARDWARE,
                GENUINE_HARDWARE,
                "platform",
                f"{compared} firmware PCRs equal platform reference {ref.platform_id}",
            ),
        )


# PCRs a release pins, and the claim each speaks to (FACTS.md: UKI PCRs 4/9/11/12).
RELEASE_PCRS: Mapping[int, tuple[Claim, str]] = {
    4: (Claim.EXECUTABLES, "kernel / boot application differs"),
    8: (Claim.CONFIGURATION, "boot loader command line differs"),
    9: (Claim.CONFIGURATION, "kernel command line or initrd differs"),
    11: (Claim.EXECUTABLES, "unified kernel image sections differ"),
    12: (Claim.CONFIGURATION, "kernel command line or credentials differ"),
    15: (Claim.FILE_SYSTEM, "dm-verity root hash measured before switch_root differs"),
}
# A release PCR that differs (first) or that the quote does not include (second: the release
# pins it but the verifier did not ask for it -- never affirming, but not the node's fault).
_DIFFERS = {
    Claim.EXECUTABLES: CONTRAINDICATED_RUNTIME,
    Claim.CONFIGURATION: UNSUPPORTABLE_CONFIG,
    Claim.FILE_SYSTEM: CONTRAINDICATED_FILES,
}
_NOT_QUOTED = {
    Claim.EXECUTABLES: UNRECOGNIZED_RUNTIME,
    Claim.CONFIGURATION: UNSAFE_CONFIG,
    Claim.FILE_SYSTEM: UNRECOGNIZED_FILES,
}


@dataclass(frozen=True, slots=True)
class ReleasePcrCheck:
    """executables / configuration / file-system: quoted boot PCRs equal one of the release's
    expected variants for the node's platform. A differing command line names both root
    hashes. Every PCR a variant pins must be quoted in each of its banks the quote has (a
    PCR left out of the selection is never taken as matching: fail closed)."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        quoted = ctx.quoted
        rel = ctx.reference_release
        if quoted is None or rel is None or ctx.platform_id is None:
            return ()
        variants = rel.expected_pcrs.get(ctx.platform_id)
        if not variants:
            return ()
        best: list[tuple[int, Claim, int, str]] | None = None
        for _name, expected in sorted(variants.items()):
            diffs: list[tuple[int, Claim, int, str]] = []
            banks = 0
            for alg, values in expected.values.items():
                got = quoted.values.get(alg)
                if got is None:
                    continue
                banks += 1
                for pcr, want in sorted(values.items()):
                    claim, what = RELEASE_PCRS.get(pcr, (Claim.EXECUTABLES, "differs"))
                    if pcr not in got:
                        diffs.append(
                            (
                                pcr,
                                claim,
                                _NOT_QUOTED[claim],
                                f"PCR {pcr}: release {rel.version} pins it "
                                f"({alg.bank_name}) but the quote does not include it; "
                                "appraise with a PCR selection that does",
                            )
                        )
                    elif not hmac.compare_digest(got[pcr], want):
                        diffs.append(
                            (
                                pcr,
                                claim,
                                _DIFFERS[claim],
                                self._explain(ctx, rel, pcr, what, want, got[pcr]),
                            )
                        )
            if not banks:
                diffs.append(
                    (
                        -1,
                        Claim.EXECUTABLES,
                        UNRECOGNIZED_RUNTIME,
                        f"the quote has none of the banks release {rel.version}'s "
                        f"expected PCRs ({_name}) are given in",
                    )
                )
            if not diffs:
                return (
                    Finding(
                        Claim.EXECUTABLES,
                        APPROVED_BOOT,
                        "release-pcrs",
                        f"boot PCRs equal release {rel.version}'s expected values "
                        f"({_name}) on {ctx.platform_id}",
                    ),
                )
            if best is None or len(diffs) < len(best):
                best = diffs
        assert best is not None
        return tuple(
            Finding(claim, value, "release-pcrs", text) for _pcr, claim, value, text in best
        )

    @staticmethod
    def _explain(
        ctx: AppraisalContext, rel: Release, pcr: int, what: str, want: bytes, got: bytes
    ) -> str:
        if pcr in (8, 9, 12) and ctx.cmdline is not None:
            found = verity_root_hashes(ctx.cmdline)
            if found:
                key, actual = found[0]
                if actual != rel.verity.root_hash:
                    return (
                        f"PCR {pcr}: kernel command line differs from release {rel.version}: "
                        f"`{key}={rel.verity.root_hash.hex()}` → `{key}={actual.hex()}`"
                    )
            return (
                f"PCR {pcr}: {what} from release {rel.version}: the node booted "
                f"`{ctx.cmdline[:512]}`; expected {_short(want)}, quoted {_short(got)}"
            )
        return _pcr_line(pcr, f"{what} from release {rel.version}", want, got)


@dataclass(frozen=True, slots=True)
class VerityCheck:
    """file-system: the authenticated dm-verity root hash is a blessed release's."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.evidence is None or ctx.registry is None:
            return ()
        if not ctx.verity_root_hashes:
            return (
                Finding(
                    Claim.FILE_SYSTEM,
                    NO_CLAIM,
                    "verity",
                    "no measured dm-verity root hash (runtime log or verified kernel "
                    "command line): the root file system is not vouched for",
                ),
            )
        out = []
        snap = ctx.registry.snapshot
        for source, h in ctx.verity_root_hashes:
            rel = next((r for r in snap.releases.values() if r.verity.root_hash == h), None)
            if rel is None:
                out.append(
                    Finding(
                        Claim.FILE_SYSTEM,
                        CONTRAINDICATED_FILES,
                        "verity",
                        f"dm-verity root hash {h.hex()} ({source}) is not blessed "
                        f"in registry #{snap.sequence}",
                    )
                )
            else:
                out.append(
                    Finding(
                        Claim.FILE_SYSTEM,
                        APPROVED_FILES,
                        "verity",
                        f"dm-verity root hash ({source}) is release {rel.version}'s",
                    )
                )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class RuntimeLogCheck:
    """configuration: the runtime log replays into the runtime PCR, content authentic."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.evidence is None:
            return ()
        pcr = ctx.enrollment.runtime_pcr
        if ctx.runtime_error is not None:
            return (
                Finding(
                    Claim.CONFIGURATION,
                    UNSUPPORTABLE_CONFIG,
                    "runtime-log",
                    f"runtime log (PCR {pcr}): {ctx.runtime_error}",
                ),
            )
        if ctx.runtime is None:
            return (
                Finding(
                    Claim.CONFIGURATION,
                    UNSAFE_CONFIG,
                    "runtime-log",
                    f"the node served no runtime log for PCR {pcr}",
                ),
            )
        kinds = sorted({e.kind for e in ctx.runtime.events})
        return (
            Finding(
                Claim.CONFIGURATION,
                APPROVED_CONFIG,
                "runtime-log",
                f"runtime log replays into PCR {pcr}: {len(ctx.runtime.events)} events "
                f"({', '.join(kinds)})",
            ),
        )


@dataclass(frozen=True, slots=True)
class AuditChainCheck:
    """configuration: operator audit entries chain and match their runtime-log anchors."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.runtime is None:
            return ()
        if ctx.audit_error is not None:
            return (
                Finding(
                    Claim.CONFIGURATION,
                    UNSUPPORTABLE_CONFIG,
                    "audit-chain",
                    f"operator audit log: {ctx.audit_error}",
                ),
            )
        if ctx.audit is None:
            return ()
        return (
            Finding(
                Claim.CONFIGURATION,
                APPROVED_CONFIG,
                "audit-chain",
                f"{len(ctx.audit)} operator audit entries chain and match their "
                "runtime-log anchors",
            ),
        )


@dataclass(frozen=True, slots=True)
class BlessedPolicyCheck:
    """configuration: when the node's release blesses a runtime policy (``Release.policies``),
    the runtime log's latest ``policy`` event (the loaded MAC policy) and latest ``config``
    event (attestd's configuration digest) carry blessed digests. Digests are compared, never
    recomputed; a release that blesses none makes no finding."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        d = ctx.release
        rel = None if d is None else d.release
        if ctx.evidence is None or rel is None or rel.policies is None:
            return ()
        blessed = rel.policies
        if ctx.runtime is None:
            return (
                Finding(
                    Claim.CONFIGURATION,
                    UNSUPPORTABLE_CONFIG,
                    "release-policy",
                    f"release {rel.version} blesses the node's MAC policy and "
                    "configuration, but no verified runtime log shows them",
                ),
            )
        out: list[Finding] = []
        if blessed.mac is not None:
            out.append(self._mac(rel, blessed.mac, ctx.runtime.latest(KIND_POLICY)))
        if blessed.config is not None:
            out.append(self._config(rel, blessed.config, ctx.runtime.latest(KIND_CONFIG)))
        return tuple(out)

    @staticmethod
    def _mac(rel: Release, mac: Mapping[str, bytes], event: RuntimeEvent | None) -> Finding:
        want = ", ".join(f"{k} {v.hex()}" for k, v in mac.items()) or "none"
        detail = None if event is None else event.detail
        if event is None or not isinstance(detail, MacPolicy):
            if not mac:
                return Finding(
                    Claim.CONFIGURATION,
                    APPROVED_CONFIG,
                    "release-policy",
                    f"no MAC policy measured, as release {rel.version} expects",
                )
            return Finding(
                Claim.CONFIGURATION,
                UNSUPPORTABLE_CONFIG,
                "release-policy",
                f"MAC policy missing: release {rel.version} blesses {want}, the "
                "runtime log has no `policy` event",
            )
        got = f"{detail.mac} {detail.sha256.hex()}"
        blessed = mac.get(detail.mac)
        if blessed is None or not hmac.compare_digest(blessed, detail.sha256):
            what = f"{detail.mac} policy digest" if blessed is not None else "MAC policy"
            return Finding(
                Claim.CONFIGURATION,
                UNSUPPORTABLE_CONFIG,
                "release-policy",
                f"{what} differs from release {rel.version}: "
                f"{blessed.hex() if blessed is not None else want} → "
                f"{detail.sha256.hex() if blessed is not None else got} "
                f"(runtime log event {event.recnum})",
            )
        return Finding(
            Claim.CONFIGURATION,
            APPROVED_CONFIG,
            "release-policy",
            f"{detail.mac} policy digest is release {rel.version}'s",
        )

    @staticmethod
    def _config(rel: Release, config: Sequence[bytes], event: RuntimeEvent | None) -> Finding:
        want = " | ".join(c.hex() for c in config[:3]) + (" | …" if len(config) > 3 else "")
        if event is None or not isinstance(event.detail, ConfigDigest):
            return Finding(
                Claim.CONFIGURATION,
                UNSUPPORTABLE_CONFIG,
                "release-config",
                f"config digest missing: release {rel.version} blesses {want}, the "
                "runtime log has no `config` event",
            )
        got = event.detail.sha256
        if not any(hmac.compare_digest(c, got) for c in config):
            return Finding(
                Claim.CONFIGURATION,
                UNSUPPORTABLE_CONFIG,
                "release-config",
                f"config digest differs from release {rel.version}: {want} → "
                f"{got.hex()} (runtime log event {event.recnum})",
            )
        return Finding(
            Claim.CONFIGURATION,
            APPROVED_CONFIG,
            "release-config",
            f"attestd config digest is one release {rel.version} blesses",
        )


@dataclass(frozen=True, slots=True)
class ReleaseStatusCheck:
    """executables: the release is blessed, not revoked, and its embargo not overdue."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        d = ctx.release
        if ctx.evidence is None or ctx.registry is None or d is None:
            return ()
        text = "; ".join(d.reasons)
        if d.status is ReleaseStatus.BLESSED:
            return (Finding(Claim.EXECUTABLES, APPROVED_RUNTIME, "release", text),)
        if d.status is ReleaseStatus.EMBARGOED_OVERDUE:
            return (Finding(Claim.EXECUTABLES, UNSAFE_RUNTIME, "release", text),)
        return (Finding(Claim.EXECUTABLES, CONTRAINDICATED_RUNTIME, "release", text),)


DEFAULT_APPRAISAL_POLICY: AppraisalPolicy = AllOf(
    (
        QuoteCheck(),
        FirmwareReplayCheck(),
        PlatformReferenceCheck(),
        ReleasePcrCheck(),
        VerityCheck(),
        RuntimeLogCheck(),
        AuditChainCheck(),
        BlessedPolicyCheck(),
        ReleaseStatusCheck(),
    )
)


# --- the entry point -------------------------------------------------------------------------


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
    policy_id: str = DEFAULT_POLICY_ID,
) -> AppraisalResult:
    """Appraise one evidence document (``POST /v1/evidence``'s answer) against the enrollment,
    the challenge and the verified registry. Never raises for evidence problems.

    ``selection``: exactly what was asked for (the quote must cover it). ``previous``: the
    clock of the node's last verified quote (counters must not go backwards). ``tls_binding``:
    sha256 of the SPKI of the TLS key the verifier connected to, when over TLS.
    ``audit_entries``: the operator audit entries (``GET /v1/audit``) when fetched over an
    authenticated channel. ``identity``: the node's ``/v1/identity`` answer of this contact,
    to compare its AK / EK with the enrollment. ``now``: the verifier's time, taken once.
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
    policy_id: str = DEFAULT_POLICY_ID,
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
    node_id = enrollment.node_id
    if not isinstance(evidence_doc, Mapping):
        return Appraised(
            unappraisable(
                node_id, "evidence is not a JSON object", nonce=nonce, now=now, policy_id=policy_id
            ),
            memory,
        )
    try:
        ctx, memory = _establish(
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
        )
    except _Stale as exc:
        return Appraised(
            unappraisable(
                node_id,
                f"the logs must be fetched again: {exc}",
                nonce=nonce,
                now=now,
                policy_id=policy_id,
            ),
            memory.forget_logs(),
            complete=False,
        )
    except EvidenceFormatError as exc:
        return Appraised(
            unappraisable(
                node_id, f"malformed evidence: {exc}", nonce=nonce, now=now, policy_id=policy_id
            ),
            memory,
        )
    if isinstance(ctx.evidence_error, EvidenceFormatError):
        return Appraised(
            unappraisable(
                ctx.node_id,
                f"malformed evidence: {ctx.evidence_error}",
                nonce=nonce,
                now=now,
                policy_id=policy_id,
            ),
            memory,
        )
    findings = policy.evaluate(ctx)
    fw = ctx.firmware
    return Appraised(
        _summarise(
            findings,
            node_id=ctx.node_id,
            nonce=nonce,
            now=now,
            policy_id=policy_id,
            forced=Verdict.ALARM if ctx.identity_alarm is not None else None,
            clock=None if ctx.evidence is None else ctx.evidence.quote.clock,
            release=ctx.release,
            platform_id=platform_id,
            notes=ctx.notes,
            quirks=() if fw is None else tuple(f"{q.name}@{q.version}" for q in fw.quirks),
        ),
        memory,
    )
