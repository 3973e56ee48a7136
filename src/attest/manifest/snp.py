"""An SEV-SNP guest appraised against a release of the signed registry (pure; attest.manifest
imports attest.snp, never the reverse).

A release's ``snp`` section (``attest.manifest.model.ReleaseSnp``) blesses launch measurements
and the SNP policy its guests run under. ``appraise_snp_release`` takes a verified report and a
verified registry and returns an ``SnpReleaseAppraisal``: which release and launch the report's
MEASUREMENT is, and every refusal and warning — the release's policy (``evaluate_snp_policy``),
the measurement (explained: a digest cannot be inverted, so a mismatch lists the inputs each
blessed launch was computed from, one of which the guest's launch must differ in), the
release's revocation, and HOST_DATA when the release binds it.

Platform policy: a platform reference of the registry (signed by the platform role) may carry
an SNP policy too. When the *verifier* names the guest's platform (``platform``; nothing the
guest says chooses it), the report is appraised under the stricter of the release's and the
platform's policy (``attest.snp.policy.stricter``), and each policy finding names the policy
it came from: ``[release V policy]``, ``[platform P policy]`` or both.

HOST_DATA binding: ``release_host_data(release)`` is sha256 of the RFC 8785 form of
``Release.host_data_record()`` — the release's version, sequence, artifact and dm-verity
parameters — which the host passes at launch (QEMU ``sev-snp-guest,host-data=``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime

from attest.errors import SnpCheckError
from attest.manifest.canonical import canonicalize
from attest.manifest.evaluate import ReleaseStatus, evaluate_release
from attest.manifest.model import PlatformReference, Release, SnpLaunch, VerifiedRegistry
from attest.snp.findings import Finding, SnpCheck
from attest.snp.policy import SnpDecision, SnpPolicy, VerifiedCrl, evaluate_snp_policy, stricter
from attest.snp.verify import VerifiedReport


@dataclass(frozen=True)
class SnpReleaseAppraisal:
    """The release and launch a report was matched to (None: none), and the decision."""

    release: Release | None
    launch: SnpLaunch | None
    decision: SnpDecision

    @property
    def affirmed(self) -> bool:
        return self.decision.affirmed


def release_host_data(release: Release) -> bytes:
    """The HOST_DATA (32 bytes) a guest of ``release`` carries when the release binds it."""
    return hashlib.sha256(canonicalize(release.host_data_record())).digest()


def describe_launch(launch: SnpLaunch) -> str:
    """``slot a (4 x EPYC-v4): ovmf sha256 ab12.., kernel .., initrd .., cmdline ..``."""

    def short(d: bytes | None) -> str:
        return "none" if d is None else d.hex()

    inputs = [f"ovmf sha256 {launch.ovmf_sha256.hex()}"]
    inputs += [
        f"{name} {short(d)}"
        for name, d in (
            ("kernel", launch.kernel_sha256),
            ("initrd", launch.initrd_sha256),
            ("cmdline", launch.cmdline_sha256),
        )
    ]
    head = f"slot {launch.slot} ({launch.vcpus} x {launch.vcpu_type})"
    return f"{head}: measurement {launch.measurement.hex()}, {', '.join(inputs)}"


def _mismatch(measurement: bytes, release: Release) -> Finding:
    launches = release.snp.launches if release.snp is not None else ()
    blessed = "; ".join(describe_launch(launch) for launch in launches)
    return Finding(
        SnpCheck.MEASUREMENT,
        f"measurement {measurement.hex()} matches no blessed launch of release "
        f"{release.version}; blessed: [{blessed}]; the guest's launch differs in one of these "
        "inputs (OVMF, kernel, initrd, command line) or in its vCPU count or type",
    )


def _find(registry: VerifiedRegistry, measurement: bytes) -> list[tuple[Release, SnpLaunch]]:
    """Every release (revoked ones too) with a launch of this measurement, newest first."""
    hits = [
        (rel, launch)
        for rel in registry.snapshot.releases.values()
        if rel.snp is not None
        for launch in rel.snp.launches
        if launch.measurement == measurement
    ]
    return sorted(hits, key=lambda h: -h[0].sequence)


def _release_status(
    registry: VerifiedRegistry, release: Release, *, now: datetime
) -> tuple[list[Finding], list[Finding]]:
    """(refusals, warnings) of the release's standing in the registry."""
    d = evaluate_release(registry, verity_root_hash=release.verity.root_hash, now=now)
    why = "; ".join(d.reasons)
    if d.status is ReleaseStatus.REVOKED:
        return [Finding(SnpCheck.RELEASE_REVOKED, why)], []
    if d.status is ReleaseStatus.EMBARGOED_OVERDUE:
        return [], [Finding(SnpCheck.RELEASE, why)]
    if d.status is not ReleaseStatus.BLESSED or d.release is None:
        return [Finding(SnpCheck.RELEASE, why)], []
    if d.release.version != release.version:  # two releases share a verity root hash
        msg = f"release {release.version}'s image is blessed as {d.release.version}"
        return [Finding(SnpCheck.RELEASE, msg)], []
    return [], []


def _sourced(
    findings: tuple[Finding, ...],
    by_release: set[SnpCheck],
    by_platform: set[SnpCheck],
    names: tuple[str, str],
) -> tuple[Finding, ...]:
    """Each finding with the policy it came from: ``[release V policy]``, ``[platform P
    policy]`` or ``[release V and platform P policies]``."""
    rel, plat = names

    def source(check: SnpCheck) -> str:
        if check in by_platform and check not in by_release:
            return f"{plat} policy"
        if check in by_platform:
            return f"{rel} and {plat} policies"
        return f"{rel} policy"

    return tuple(Finding(f.check, f"{f.message} [{source(f.check)}]") for f in findings)


def _checks(decision: SnpDecision) -> set[SnpCheck]:
    return {f.check for f in (*decision.refusals, *decision.warnings)}


def _evaluate(
    vr: VerifiedReport,
    release: Release,
    policy: SnpPolicy,
    platform: tuple[str, PlatformReference] | None,
    *,
    crl: VerifiedCrl | None,
    now: datetime,
) -> SnpDecision:
    """The release's policy, made stricter by the platform's when it has one; each finding
    names its policy (module docstring)."""
    # the measurement and HOST_DATA are checked by the caller, with their explanations
    mine = replace(policy, allowed_measurements=None, expected_host_data=None)
    names = (f"release {release.version}", f"platform {platform[0]}" if platform else "")
    theirs: SnpPolicy | None = None if platform is None else platform[1].snp
    if theirs is None:
        decision = evaluate_snp_policy(vr, mine, crl=crl, now=now)
        return SnpDecision(
            _sourced(decision.refusals, set(), set(), names),
            _sourced(decision.warnings, set(), set(), names),
        )
    try:
        both = stricter(mine, theirs)
    except SnpCheckError as exc:
        check = SnpCheck(exc.check)
        msg = f"{names[0]} and {names[1]} policies conflict: {exc}"
        return SnpDecision((Finding(check, msg),), ())
    decision = evaluate_snp_policy(vr, both, crl=crl, now=now)
    by_release = _checks(evaluate_snp_policy(vr, mine, crl=crl, now=now))
    by_platform = _checks(evaluate_snp_policy(vr, theirs, crl=crl, now=now))
    return SnpDecision(
        _sourced(decision.refusals, by_release, by_platform, names),
        _sourced(decision.warnings, by_release, by_platform, names),
    )


def appraise_snp_release(
    vr: VerifiedReport,
    registry: VerifiedRegistry,
    *,
    version: str | None,
    crl: VerifiedCrl | None,
    now: datetime,
    platform: str | None = None,
) -> SnpReleaseAppraisal:
    """Appraise a verified report against release ``version`` of the registry, or (None) the
    release whose blessed launch has the report's MEASUREMENT; under the stricter of the
    release's policy and that of ``platform`` (the verifier's choice, never the guest's) when
    the platform reference has one. A platform named but not in the registry is refused.

    Without a version, a measurement blessed by several releases is appraised under the newest.
    A measurement that any revoked release blesses is refused: the launch is the same guest, so
    a revocation of one is a revocation of it.
    """
    snap = registry.snapshot
    measurement = vr.report.measurement
    hits = _find(registry, measurement)
    if version is None:
        if not hits:
            with_snp = sum(1 for r in snap.releases.values() if r.snp is not None)
            msg = (
                f"measurement {measurement.hex()} matches no blessed launch in registry "
                f"#{snap.sequence} ({with_snp} release(s) bless SNP launches)"
            )
            return SnpReleaseAppraisal(
                None, None, SnpDecision((Finding(SnpCheck.MEASUREMENT, msg),), ())
            )
        release = hits[0][0]
    else:
        found = snap.releases.get(version)
        if found is None:
            msg = f"release {version} is not in registry #{snap.sequence}"
            return SnpReleaseAppraisal(
                None, None, SnpDecision((Finding(SnpCheck.RELEASE, msg),), ())
            )
        release = found
    if release.snp is None:
        msg = f"release {release.version} blesses no SEV-SNP launch"
        return SnpReleaseAppraisal(
            release, None, SnpDecision((Finding(SnpCheck.RELEASE, msg),), ())
        )

    refusals, warnings = _release_status(registry, release, now=now)
    on: tuple[str, PlatformReference] | None = None
    if platform is not None:
        signed = snap.platforms.get(platform)
        if signed is None:
            msg = f"platform {platform} is not in registry #{snap.sequence}"
            refusals.append(Finding(SnpCheck.PLATFORM, msg))
        else:
            on = (platform, signed.reference)
    for other in (r.version for r, _ in hits):
        if other != release.version and other in snap.revocations:
            msg = f"measurement {measurement.hex()} is also blessed by revoked release {other}"
            refusals.append(Finding(SnpCheck.RELEASE_REVOKED, msg))
    launch = next((x for x in release.snp.launches if x.measurement == measurement), None)
    if launch is None:
        mismatch = _mismatch(measurement, release)
        if hits:  # the guest runs another release's blessed launch
            twin, at = hits[0]
            where = f" (it is release {twin.version}'s launch, slot {at.slot})"
            mismatch = Finding(mismatch.check, mismatch.message + where)
        refusals.append(mismatch)
    binders = [f"release {release.version}"] if release.snp.bind_host_data else []
    if on is not None and on[1].snp is not None and on[1].snp_bind_host_data:
        binders.append(f"platform {on[0]}")
    if binders:
        want = release_host_data(release)
        if vr.report.host_data != want:
            msg = (
                f"HOST_DATA {vr.report.host_data.hex()} is not release {release.version}'s "
                f"record digest {want.hex()} [{' and '.join(binders)} policy]"
            )
            refusals.append(Finding(SnpCheck.HOST_DATA, msg))
    decision = _evaluate(vr, release, release.snp.policy, on, crl=crl, now=now)
    return SnpReleaseAppraisal(
        release,
        launch,
        SnpDecision(
            refusals=tuple(refusals) + decision.refusals,
            warnings=tuple(warnings) + decision.warnings,
        ),
    )
