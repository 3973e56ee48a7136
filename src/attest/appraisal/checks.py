"""Appraisal policy: checks that read an ``AppraisalContext`` (what ``attest.appraisal.stages``
established) and say, per AR4SI claim (draft-ietf-rats-ar4si §2.3), what the verifier believes
and why. A policy is a Protocol with one method, ``evaluate(ctx) -> tuple[Finding, ...]``;
``AllOf`` / ``AnyOf`` combine policies. ``DEFAULT_APPRAISAL_POLICY`` is every check below, in
check order (docs/verify.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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
    UNRECOGNIZED_FILES,
    UNRECOGNIZED_HARDWARE,
    UNRECOGNIZED_RUNTIME,
    UNSAFE_CONFIG,
    UNSAFE_HARDWARE,
    UNSAFE_RUNTIME,
    UNSUPPORTABLE_CONFIG,
    UNTRUSTWORTHY_INSTANCE,
    Claim,
    Finding,
    Tier,
)
from attest.appraisal.history import (
    AuditChainCheck,
    AuditContinuityCheck,
    AuditUnanchoredCheck,
    RuntimeLogCheck,
)
from attest.appraisal.stages import AppraisalContext
from attest.errors import (
    ClockError,
    KeyPolicyError,
    NonceError,
    PcrDigestError,
    PcrSelectionError,
    ReplayError,
    SignatureError,
    VerificationError,
)
from attest.eventlog.facts import verity_root_hashes
from attest.manifest.evaluate import ReleaseStatus
from attest.manifest.model import PlatformReference, Release
from attest.runtime import KIND_CONFIG, KIND_POLICY, ConfigDigest, MacPolicy, RuntimeEvent


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


# --- the checks ---------------------------------------------------------------------------


def _pcr_line(pcr: int, what: str, expected: bytes, got: bytes) -> str:
    return f"PCR {pcr}: {what}: expected {expected.hex()}, quoted {got.hex()}"


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
    """hardware: quoted PCRs 0-7 equal the signed reference of the platform the verifier
    names. With a registry and no platform named, the platform is not appraised: a warning,
    or no claim when the verifier's rules waive the platform (``waive_platform``), said so."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        quoted = ctx.quoted
        if quoted is None or ctx.registry is None:
            return ()
        if ctx.platform_id is None:
            if ctx.rules.waive_platform:
                return (
                    Finding(
                        Claim.HARDWARE,
                        NO_CLAIM,
                        "platform",
                        "platform not appraised: waived by the verifier's policy "
                        f"{ctx.rules.policy_id} (waive_platform)",
                    ),
                )
            return (
                Finding(
                    Claim.HARDWARE,
                    UNSAFE_HARDWARE,
                    "platform",
                    "platform not appraised: no platform named, so firmware PCRs 0-7 were not "
                    "compared with a signed platform reference (name it: --platform; or waive "
                    "it in the policy: waive_platform)",
                ),
            )
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
            return (
                Finding(
                    Claim.HARDWARE,
                    UNSAFE_HARDWARE,
                    "platform",
                    f"platform not appraised: the quote covers none of the PCRs platform "
                    f"reference {ref.platform_id} pins",
                ),
            )
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
        best: list[Finding] | None = None
        for _name, expected in sorted(variants.items()):
            diffs: list[Finding] = []
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
                            Finding(
                                claim,
                                _NOT_QUOTED[claim],
                                "release-pcrs",
                                f"PCR {pcr}: release {rel.version} pins it "
                                f"({alg.bank_name}) but the quote does not include it; "
                                "appraise with a PCR selection that does",
                            )
                        )
                    elif not hmac.compare_digest(got[pcr], want):
                        diffs.append(
                            Finding(
                                claim,
                                _DIFFERS[claim],
                                "release-pcrs",
                                self._explain(ctx, rel, pcr, what, want, got[pcr]),
                            )
                        )
            if not banks:
                diffs.append(
                    Finding(
                        Claim.EXECUTABLES,
                        UNRECOGNIZED_RUNTIME,
                        "release-pcrs",
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
        return tuple(best)

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
                f"`{ctx.cmdline[:512]}`; expected {want.hex()}, quoted {got.hex()}"
            )
        return _pcr_line(pcr, f"{what} from release {rel.version}", want, got)


@dataclass(frozen=True, slots=True)
class VerityCheck:
    """file-system: the authenticated dm-verity root hash is a blessed release's."""

    def evaluate(self, ctx: AppraisalContext) -> tuple[Finding, ...]:
        if ctx.evidence is None or ctx.registry is None:
            return ()
        if not ctx.verity_root_hashes:
            # Not knowing which release runs is not "blessed": the node chooses what it shows.
            relaxed = ctx.rules.allow_unidentified_release
            return (
                Finding(
                    Claim.FILE_SYSTEM,
                    NO_CLAIM if relaxed else CONTRAINDICATED_FILES,
                    "verity",
                    "no authenticated dm-verity root hash (runtime log or verified kernel "
                    "command line): the release the node runs is not identified"
                    + (" (allowed by the verifier's rules)" if relaxed else ""),
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
        if ctx.evidence is None:
            return ()
        if ctx.registry is None:
            if ctx.rules.allow_unidentified_release:
                return ()
            return (
                Finding(
                    Claim.EXECUTABLES,
                    UNRECOGNIZED_RUNTIME,
                    "release",
                    "no registry: release not appraised (give the verifier a blessed registry)",
                ),
            )
        if d is None:
            return ()  # VerityCheck says why no release was identified
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
        AuditContinuityCheck(),
        AuditUnanchoredCheck(),
        BlessedPolicyCheck(),
        ReleaseStatusCheck(),
    )
)
