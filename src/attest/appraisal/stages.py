"""The verification stages of an appraisal: evidence in, verified values out. Pure.

``establish`` runs them in the spec's order, one function per stage; a stage that fails records
its error rather than raising it, so that the policies (``attest.appraisal.checks``) can say
what it means:

1. ``check_identity``: the AK in the evidence (and in the node's ``/v1/identity`` answer, when
   given) must be the enrolled one, and so must its EK. A change is an alarm, never a silent
   re-enrollment; the quote is not even tried with another key.
2. ``check_quote``: signature by the enrolled AK, Merkle inclusion of our nonce, PCR selection,
   digest, clock and counters against the previous quote (``attest.evidence.verify_evidence``;
   ``attest.quote`` gives the order and the spec sections).
3. ``replay_firmware``: the firmware event log replayed into the quoted PCRs, and its facts.
4. ``replay_runtime``: the runtime log replayed into the runtime PCR.
5. ``verify_audit``: the operator audit chain against the runtime log's anchors.
6. ``find_release``: the release the node runs, found in the verified registry by its
   authenticated dm-verity root hash.

The outcome is an ``AppraisalContext``: verified values, or the error that stopped each stage.
Given a ``NodeMemory`` that holds logs (``appraise_incremental``), a stage checks only what is
new; when the evidence cannot continue what is held, it raises ``StaleMemory``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.appraisal.memory import (
    Continuity,
    FirmwareReplayCache,
    HeldFirmware,
    NodeMemory,
    firmware_key,
)
from attest.appraisal.rules import DEFAULT_RULES, VerifierRules
from attest.audit import AuditEntry, parse_entry, verify_audit_chain, verify_audit_chain_from
from attest.enroll import Enrollment
from attest.errors import AttestError, EvidenceFormatError, VerificationError
from attest.eventlog.facts import BootFacts, facts, load_options_digest, verity_root_hashes
from attest.eventlog.parse import UnverifiedEventLog, parse_event_log
from attest.eventlog.replay import VerifiedEventLog, replay
from attest.evidence import (
    VerifiedEvidence,
    ak_public_of,
    boot_cmdline_of,
    ek_public_of,
    evidence_node_id,
    firmware_log_of,
    image_version_of,
    runtime_log_of,
    verify_evidence,
)
from attest.manifest.evaluate import ReleaseDecision, evaluate_release
from attest.manifest.model import Release, VerifiedRegistry
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.runtime import RuntimeReplay, VerifiedRuntimeLog, VerityDevice, verify_runtime_log_from
from attest.tpmstruct import ClockInfo, parse_public

MAX_AUDIT_ENTRIES = 100_000


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
    rules: VerifierRules = DEFAULT_RULES  # the verifier's, never the node's
    previous: Continuity | None = None  # what this verifier verified of the node before

    @property
    def quoted(self) -> PcrValues | None:
        return None if self.evidence is None else self.evidence.quote.pcrs


class StaleMemory(Exception):  # noqa: N818 -- control flow from a stage to appraise_incremental
    """A log was asked for incrementally and what came back cannot continue what is held."""


def establish(
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
    rules: VerifierRules = DEFAULT_RULES,
    continuity: Continuity | None = None,
) -> tuple[AppraisalContext, NodeMemory]:
    """The verification stages, in order; the context and the next memory. Raises
    ``StaleMemory`` when ``memory`` held a log and the evidence does not continue it (the
    caller challenges again with no memory), ``EvidenceFormatError`` for unreadable evidence."""
    node_id = evidence_node_id(evidence_doc)
    ctx = AppraisalContext(
        node_id=node_id if node_id is not None else enrollment.node_id,
        enrollment=enrollment,
        registry=registry,
        platform_id=platform_id,
        now=now,
        rules=rules,
        previous=continuity,
    )
    if memory.ak is None or not hmac.compare_digest(memory.ak_public, enrollment.ak_public):
        memory = NodeMemory(ak_public=enrollment.ak_public, ak=enrollment.ak)
    alarm = check_identity(evidence_doc, enrollment, identity)
    if alarm is not None:
        return _replace(ctx, identity_alarm=alarm), memory
    try:
        ve, memory = check_quote(
            evidence_doc,
            memory,
            nonce=nonce,
            selection=selection,
            tls_binding=tls_binding,
            previous=previous,
        )
    except VerificationError as exc:
        return _replace(ctx, evidence_error=exc), memory
    quoted = ve.quote.pcrs
    notes: list[str] = []
    fw = replay_firmware(evidence_doc, quoted, memory, cache, notes)
    # The verifier's runtime PCR, whatever the node (or an old enrollment) says.
    replayed, runtime_error = replay_runtime(evidence_doc, quoted, memory, pcr=rules.runtime_pcr)
    if replayed is not None and replayed.unquoted:
        notes.append(
            f"{replayed.unquoted} runtime events recorded after the quote are not appraised "
            "(the next quote covers them)"
        )
    audit, audit_error, audit_held = verify_audit(audit_entries, replayed, memory, notes)
    runtime = None if replayed is None else replayed.log
    rel = find_release(evidence_doc, fw.boot, runtime, registry=registry, now=now, notes=notes)
    return _replace(
        ctx,
        evidence=ve,
        firmware=fw.verified,
        firmware_error=fw.error,
        boot=fw.boot,
        runtime=runtime,
        runtime_error=runtime_error,
        audit=audit,
        audit_error=audit_error,
        cmdline=rel.cmdline,
        verity_root_hashes=rel.verity_root_hashes,
        claimed_version=rel.claimed_version,
        release=rel.release,
        reference_release=rel.reference_release,
        notes=tuple(notes),
    ), memory.holding(fw.held, replayed, audit_held)


def _replace(ctx: AppraisalContext, **changes: Any) -> AppraisalContext:
    # The fresh context of establish plus the stages' values (dataclasses.replace costs
    # ~20 µs a call on this hot path; a direct construction a few).
    return AppraisalContext(
        ctx.node_id,
        ctx.enrollment,
        ctx.registry,
        ctx.platform_id,
        ctx.now,
        rules=ctx.rules,
        previous=ctx.previous,
        **changes,
    )


# --- 1. identity ---------------------------------------------------------------------------


def check_identity(
    evidence_doc: Mapping[str, Any], enrollment: Enrollment, identity: Mapping[str, Any] | None
) -> str | None:
    """The alarm sentence when the AK in the evidence (or the AK / EK / node id of the identity
    document, when given) is not the enrolled one; raises ``EvidenceFormatError``."""
    ak = ak_public_of(evidence_doc)
    alarm = compare_identity(enrollment, ak_public=ak, ek_sha256=None, ek_presented=False)
    if alarm is None and identity is not None:
        i_ak, i_ek, i_node = identity_of(identity)
        alarm = compare_identity(enrollment, ak_public=i_ak, ek_sha256=i_ek, node_id=i_node)
    return alarm


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
    ak = ak_public_of(doc)
    ek_public = ek_public_of(doc)
    ek = None if ek_public is None else hashlib.sha256(parse_public(ek_public).raw).digest()
    return ak, ek, evidence_node_id(doc)


# --- 2. the quote --------------------------------------------------------------------------


def check_quote(
    evidence_doc: Mapping[str, Any],
    memory: NodeMemory,
    *,
    nonce: bytes,
    selection: PcrSelection,
    tls_binding: bytes | None,
    previous: ClockInfo | None,
) -> tuple[VerifiedEvidence, NodeMemory]:
    """The verified quote, by ``memory``'s AK (the enrolled one), and the memory of its TPM
    reset epoch. Raises ``VerificationError`` (or ``EvidenceFormatError``) when it does not
    verify; ``StaleMemory`` when ``memory`` holds logs of another epoch."""
    assert memory.ak is not None
    ve = verify_evidence(
        evidence_doc,
        nonce=nonce,
        ak=memory.ak,
        selection=selection,
        tls_binding=tls_binding,
        previous=previous,
    )
    # What is held was verified in one TPM reset epoch: PCRs are reset with the TPM, and the
    # node starts fresh logs. Another epoch voids it all (TPM 2.0 Part 1 §36.7: resetCount,
    # restartCount).
    clock = ve.quote.clock
    epoch = (clock.reset_count, clock.restart_count)
    if memory.epoch != epoch:
        if memory.holds_logs:
            raise StaleMemory(
                f"the TPM was reset or restarted (resetCount/restartCount {memory.epoch} → {epoch})"
            )
        memory = NodeMemory(ak_public=memory.ak_public, ak=memory.ak, epoch=epoch)
    return ve, memory


# --- 3. the firmware event log -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareOutcome:
    """The firmware stage's outcome: the verified replay and its boot facts, or the error that
    stopped it; ``held``: what the next memory keeps (only a log that replayed)."""

    verified: VerifiedEventLog | None = None
    boot: BootFacts | None = None
    error: AttestError | None = None
    held: HeldFirmware | None = None


def replay_firmware(
    evidence_doc: Mapping[str, Any],
    quoted: PcrValues,
    memory: NodeMemory,
    cache: FirmwareReplayCache | None,
    notes: list[str],
) -> FirmwareOutcome:
    """The firmware event log replayed into the quoted PCRs; facts from verified events only.
    Held: the log is immutable after boot, so it is fetched once; its replay is redone unless
    the quoted values it reads are the ones it was verified against."""
    held_fw = memory.firmware_log
    fw = boot = None
    try:
        # StaleMemory is no AttestError: it leaves this try.
        answer = firmware_log_of(
            evidence_doc, resume=None if held_fw is None else memory.firmware_size
        )
        if answer is None:
            if held_fw is not None:
                raise StaleMemory("the node no longer serves the firmware event log held")
            notes.append("the node serves no firmware event log")
            return FirmwareOutcome()
        log, size, digest = _firmware_log(*answer, memory, cache)
        logged = _logged_pcrs(log, memory)
        key = firmware_key(logged, quoted)
        if log is held_fw and key == memory.firmware_key and memory.firmware is not None:
            fw, boot = memory.firmware, memory.boot
        elif cache is not None:
            fw, boot = cache.replayed(digest, log, quoted, key)
        else:
            fw = replay(log, quoted)
            boot = facts(fw)
    except AttestError as exc:
        if held_fw is not None:
            raise StaleMemory(f"the firmware event log held: {exc}") from None
        return FirmwareOutcome(fw, boot, exc)
    return FirmwareOutcome(fw, boot, held=HeldFirmware(size, digest, log, logged, key, fw, boot))


def _firmware_log(
    start: int, data: bytes, memory: NodeMemory, cache: FirmwareReplayCache | None
) -> tuple[UnverifiedEventLog, int, bytes]:
    """(log, its size in bytes, SHA-256 of its bytes or b"" without a cache) of a
    ``firmware_log`` answer (``firmware_log_of``): the log held, when it was asked for from
    where the held log ends; else the whole log, parsed."""
    held_fw = memory.firmware_log
    if held_fw is not None and start == memory.firmware_size:
        if data:
            raise StaleMemory("the firmware event log grew after it was fetched")
        return held_fw, memory.firmware_size, memory.firmware_digest
    if cache is not None:
        digest, log = cache.parsed(data)
        return log, len(data), digest
    return parse_event_log(data), len(data), b""


def _logged_pcrs(log: UnverifiedEventLog, held: NodeMemory) -> frozenset[int]:
    if log is held.firmware_log:
        return held.firmware_pcrs
    return frozenset(e.pcr for e in log.events)


# --- 4. the runtime log --------------------------------------------------------------------


def replay_runtime(
    evidence_doc: Mapping[str, Any], quoted: PcrValues, memory: NodeMemory, *, pcr: int
) -> tuple[RuntimeReplay | None, AttestError | None]:
    """The runtime log replayed into the runtime PCR (``attest.runtime``), or the error that
    stopped it. Held: the new records only are checked and extend the running value, which
    must equal the quoted PCR."""
    held_rt = memory.runtime
    resumed = False
    try:
        # StaleMemory is no AttestError: it leaves this try.
        answer = runtime_log_of(evidence_doc, resume=memory.runtime_next)
        if answer is None:
            if held_rt is not None:
                raise StaleMemory("the node no longer serves the runtime log")
            return None, None
        first, records = answer
        resumed = first > 0
        replayed = verify_runtime_log_from(held_rt if resumed else None, records, quoted, pcr=pcr)
    except AttestError as exc:
        if resumed:
            raise StaleMemory(f"the runtime log from record {memory.runtime_next}: {exc}") from None
        return None, exc
    return replayed, None


# --- 5. the operator audit chain -----------------------------------------------------------


def verify_audit(
    audit_entries: Sequence[Mapping[str, Any]] | None,
    replayed: RuntimeReplay | None,
    memory: NodeMemory,
    notes: list[str],
) -> tuple[tuple[AuditEntry, ...] | None, AttestError | None, tuple[AuditEntry, ...]]:
    """(verified entries, or the error that stopped them; the entries the next memory holds):
    the audit chain against the runtime log's anchors. Held entries are not hashed again."""
    held = memory.audit if replayed is not None else ()
    if audit_entries is None or replayed is None:
        return None, None, held
    resumed = False
    try:
        if len(audit_entries) > MAX_AUDIT_ENTRIES:
            raise EvidenceFormatError(f"more than {MAX_AUDIT_ENTRIES} audit entries")
        entries = [parse_entry(e) for e in audit_entries]
        resumed = bool(held) and (not entries or entries[0].seq == held[-1].seq + 1)
        if resumed and len(held) + len(entries) > MAX_AUDIT_ENTRIES:
            raise EvidenceFormatError(f"more than {MAX_AUDIT_ENTRIES} audit entries")
        anchors = replayed.anchors
        # Entries recorded after the quote are not anchored in it yet: appraise the log up to
        # the newest entry the quoted runtime log anchors (an anchored entry missing from the
        # log still fails: truncation).
        newest = max((a.audit_seq for a in anchors), default=-1)
        later = [e for e in entries if e.seq > newest]
        if later:
            notes.append(f"{len(later)} audit entries newer than the quote are not appraised")
        anchored = [e for e in entries if e.seq <= newest]
        if resumed:
            audit = verify_audit_chain_from(held, anchored, anchors)
        else:
            audit = verify_audit_chain(anchored, anchors)
    except AttestError as exc:
        if resumed:
            raise StaleMemory(f"the audit entries from {held[-1].seq + 1}: {exc}") from None
        return None, exc, ()
    return audit, None, audit


# --- 6. the release ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """The release stage's outcome (the ``AppraisalContext`` fields of the same names)."""

    cmdline: str | None
    verity_root_hashes: tuple[tuple[str, bytes], ...]
    claimed_version: str | None
    release: ReleaseDecision | None
    reference_release: Release | None


def find_release(
    evidence_doc: Mapping[str, Any],
    boot: BootFacts | None,
    runtime: VerifiedRuntimeLog | None,
    *,
    registry: VerifiedRegistry | None,
    now: datetime,
    notes: list[str],
) -> ReleaseOutcome:
    """The release, named by an authenticated dm-verity root hash (runtime log verity-device
    events, then the verified kernel command line); the version the node claims is used only
    to pick expected PCRs when no authenticated root hash names a release."""
    cmdline = _authenticated_cmdline(evidence_doc, boot)
    hashes: list[tuple[str, bytes]] = []
    if runtime is not None:
        hashes += [
            (f"runtime log event {e.recnum} (verity-device {e.detail.name})", e.detail.root_hash)
            for e in runtime.events
            if isinstance(e.detail, VerityDevice)
        ]
    if cmdline is not None:
        hashes += [(f"kernel command line {k}=", h) for k, h in verity_root_hashes(cmdline)]
    claimed = image_version_of(evidence_doc)
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
    return ReleaseOutcome(cmdline, tuple(hashes), claimed, decision, reference)


def _authenticated_cmdline(doc: Mapping[str, Any], boot: BootFacts | None) -> str | None:
    """The kernel command line, only when a verified measurement vouches for it: a command
    line event whose data matched its digest (GRUB, systemd-boot, systemd-stub), or the one the
    node reports (``boot.cmdline``) when its UTF-16LE form is the Linux EFI stub's verified PCR
    9 LoadOptions digest."""
    if boot is None:
        return None
    if boot.kernel_cmdlines:
        return boot.kernel_cmdlines[-1].text
    text = boot_cmdline_of(doc)
    if text is None:
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
