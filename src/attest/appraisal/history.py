"""What the node's logs say over time: the runtime log, the operator audit chain, and their
continuity with what this verifier verified before (``Continuity``). Pure.

The node's root can delete files. What it cannot do is make a verifier forget: a verifier
that verified audit entry #N remembers its hash, and refuses a chain that no longer holds it
-- whatever the node presents after a reboot with a fresh, self-consistent, empty log. The
same holds for withholding: once a verifier has verified the runtime log of a TPM reset epoch,
a node that stops serving it is hiding something, not failing.

Checks (each ``evaluate(ctx) -> tuple[Finding, ...]``, on the configuration claim):

- ``RuntimeLogCheck``: the runtime log replays into the verifier's runtime PCR; a node that
  withholds it after this verifier saw it in the same epoch is contraindicated; an enrollment
  that recorded another runtime PCR than the rules name is contraindicated (re-enroll).
- ``AuditChainCheck``: the audit entries chain and match their runtime-log anchors.
- ``AuditContinuityCheck``: the audit head this verifier verified before is still in the
  node's chain (checked on the entries when fetched, else on the runtime log's anchors).
- ``AuditUnanchoredCheck``: entries the broker found in the audit log at start but had not
  anchored (``audit-unanchored`` runtime events): after its clean stop they were written by
  something else (contraindicated); after an unclean stop a crash between writing and
  anchoring looks the same (a warning).

``next_continuity`` is what the verifier stores after an appraisal; ``reset_notes`` reports
every TPM reset seen between two appraisals.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from attest.appraisal.claims import (
    APPROVED_CONFIG,
    UNSAFE_CONFIG,
    UNSUPPORTABLE_CONFIG,
    Claim,
    Finding,
    Tier,
)
from attest.appraisal.memory import AuditHead, Continuity
from attest.appraisal.stages import AppraisalContext
from attest.runtime import AuditAnchor, AuditUnanchored


def _reset_count(ctx: AppraisalContext) -> int | None:
    return None if ctx.evidence is None else ctx.evidence.quote.clock.reset_count


def _same_epoch(ctx: AppraisalContext) -> bool:
    prev = ctx.previous
    return (
        prev is not None
        and prev.reset_count is not None
        and prev.reset_count == (_reset_count(ctx))
    )


def _config(value: int, check: str, text: str) -> tuple[Finding, ...]:
    return (Finding(Claim.CONFIGURATION, value, check, text),)


@dataclass(frozen=True, slots=True)
class RuntimeLogCheck:
    """configuration: the runtime log replays into the verifier's runtime PCR."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.evidence is None:
            return ()
        pcr = ctx.rules.runtime_pcr
        if ctx.enrollment.runtime_pcr != pcr:
            return _config(
                UNSUPPORTABLE_CONFIG,
                "runtime-pcr",
                f"the node was enrolled with runtime PCR {ctx.enrollment.runtime_pcr}; this "
                f"verifier's rules use PCR {pcr}: re-enroll it",
            )
        if ctx.runtime_error is not None:
            return _config(
                UNSUPPORTABLE_CONFIG, "runtime-log", f"runtime log (PCR {pcr}): {ctx.runtime_error}"
            )
        if ctx.runtime is None:
            if _same_epoch(ctx) and ctx.previous is not None and ctx.previous.runtime_seen:
                return _config(
                    UNSUPPORTABLE_CONFIG,
                    "runtime-log",
                    f"the node withheld its runtime log (PCR {pcr}), which this verifier "
                    "verified earlier in the same TPM epoch",
                )
            return _config(
                UNSAFE_CONFIG, "runtime-log", f"the node served no runtime log for PCR {pcr}"
            )
        kinds = sorted({e.kind for e in ctx.runtime.events})
        return _config(
            APPROVED_CONFIG,
            "runtime-log",
            f"runtime log replays into PCR {pcr}: {len(ctx.runtime.events)} events "
            f"({', '.join(kinds)})",
        )


@dataclass(frozen=True, slots=True)
class AuditChainCheck:
    """configuration: operator audit entries chain and match their runtime-log anchors."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.runtime is None:
            return ()
        if ctx.audit_error is not None:
            return _config(
                UNSUPPORTABLE_CONFIG, "audit-chain", f"operator audit log: {ctx.audit_error}"
            )
        if ctx.audit is None:
            return ()
        return _config(
            APPROVED_CONFIG,
            "audit-chain",
            f"{len(ctx.audit)} operator audit entries chain and match their runtime-log anchors",
        )


def _anchors(ctx: AppraisalContext) -> tuple[AuditAnchor, ...]:
    if ctx.runtime is None:
        return ()
    return tuple(e.detail for e in ctx.runtime.events if isinstance(e.detail, AuditAnchor))


def _holds(anchors: Sequence[AuditAnchor], head: AuditHead) -> bool:
    return any(
        a.audit_seq == head.seq and hmac.compare_digest(a.entry_hash, head.entry_hash)
        for a in anchors
    )


@dataclass(frozen=True, slots=True)
class AuditContinuityCheck:
    """configuration: the node's audit chain still holds the newest entry this verifier
    verified before (a deleted or restarted audit log is contraindicated)."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        prev = None if ctx.previous is None else ctx.previous.audit_head
        if prev is None or ctx.runtime is None or ctx.audit_error is not None:
            return ()
        seen = f"audit entry #{prev.seq} ({prev.entry_hash.hex()[:16]}…), verified before,"
        if ctx.audit is not None:
            entry = next((e for e in ctx.audit if e.seq == prev.seq), None)
            if entry is None or not hmac.compare_digest(entry.entry_hash, prev.entry_hash):
                return _config(
                    UNSUPPORTABLE_CONFIG,
                    "audit-history",
                    f"{seen} is not in the node's audit chain any more ({len(ctx.audit)} "
                    "entries): the audit history was deleted or rewritten",
                )
            return _config(APPROVED_CONFIG, "audit-history", f"{seen} is still in the chain")
        anchors = _anchors(ctx)
        if _holds(anchors, prev):
            return _config(APPROVED_CONFIG, "audit-history", f"{seen} is anchored in this boot")
        newest = max((a.audit_seq for a in anchors), default=-1)
        if newest <= prev.seq:
            return _config(
                UNSUPPORTABLE_CONFIG,
                "audit-history",
                f"{seen} is not in the node's audit chain any more (the runtime log anchors "
                f"{'no entry' if newest < 0 else f'entries up to #{newest}'}): the audit "
                "history was deleted or rewritten",
            )
        return _config(
            UNSAFE_CONFIG,
            "audit-history",
            f"the audit chain grew from #{prev.seq} to #{newest} across a TPM reset; without "
            "its entries (fetched over an authenticated channel) its continuity with "
            f"{seen.removesuffix(',')} is not verified",
        )


def _unanchored_text(u: AuditUnanchored) -> str:
    one = u.first_seq == u.last_seq
    seqs = f"entry #{u.first_seq} was" if one else f"entries #{u.first_seq}..#{u.last_seq} were"
    when = " before a TPM reset (per the previous boot's runtime log)" if u.previous_boot else ""
    if u.clean_stop:
        return (
            f"operator audit {seqs} appended to audit.log while attestd-tpm was stopped after "
            f"closing it cleanly{when}: not written by attest (forged or copied in)"
        )
    return (
        f"operator audit {seqs} found unanchored when attestd-tpm started after an unclean "
        f"stop{when}: a crash between writing and anchoring an entry, or written by someone "
        "else while it was down (indistinguishable)"
    )


@dataclass(frozen=True, slots=True)
class AuditUnanchoredCheck:
    """configuration: no audit entry was written while the broker was stopped (the broker's
    ``audit-unanchored`` runtime events, in the quoted runtime log)."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.runtime is None:
            return ()
        found = [e.detail for e in ctx.runtime.events if isinstance(e.detail, AuditUnanchored)]
        if not found:
            return ()
        tier = UNSUPPORTABLE_CONFIG if any(u.clean_stop for u in found) else UNSAFE_CONFIG
        return _config(tier, "audit-unanchored", "; ".join(_unanchored_text(u) for u in found))


def _newest_head(ctx: AppraisalContext) -> AuditHead | None:
    if ctx.audit:
        last = ctx.audit[-1]
        return AuditHead(last.seq, last.entry_hash)
    anchors = _anchors(ctx)
    if not anchors:
        return None
    a = max(anchors, key=lambda x: x.audit_seq)
    return AuditHead(a.audit_seq, a.entry_hash)


def next_continuity(ctx: AppraisalContext, findings: Sequence[Finding]) -> Continuity:
    """What the verifier stores after this appraisal. A head whose continuity was refused is
    kept (the refusal repeats until an operator re-enrolls the node); otherwise the newest head
    verified in this appraisal replaces it."""
    prev = ctx.previous or Continuity()
    if ctx.evidence is None:
        return prev
    reset = _reset_count(ctx)
    refused = any(
        f.check in ("audit-history", "audit-chain") and f.tier is Tier.CONTRAINDICATED
        for f in findings
    )
    head = prev.audit_head if refused else (_newest_head(ctx) or prev.audit_head)
    seen = ctx.runtime is not None or (_same_epoch(ctx) and prev.runtime_seen)
    return Continuity(audit_head=head, reset_count=reset, runtime_seen=seen)


def reset_notes(ctx: AppraisalContext) -> tuple[str, ...]:
    """Every TPM reset (a reboot, a TPM restart) between two appraisals, as a note."""
    prev = ctx.previous
    now = _reset_count(ctx)
    if prev is None or prev.reset_count is None or now is None or now == prev.reset_count:
        return ()
    return (
        f"TPM reset since this verifier's last appraisal (resetCount {prev.reset_count} → "
        f"{now}): the node's runtime log started afresh",
    )
