"""An SEV-SNP guest appraised against a release of the signed registry (pure; attest.manifest
imports attest.snp, never the reverse).

A release's ``snp`` section (``attest.manifest.model.ReleaseSnp``) blesses launch measurements
and the SNP policy its guests run under. ``appraise_snp_release`` takes a verified report and a
verified registry and returns an ``SnpReleaseAppraisal``: which release and launch the report's
MEASUREMENT is, and every refusal and warning — the release's policy (``evaluate_snp_policy``),
the measurement (explained: a digest cannot be inverted, so a mismatch lists the inputs each
blessed launch was computed from, one of which the guest's launch must differ in), the
release's revocation, and HOST_DATA when the release binds it.

HOST_DATA binding: ``release_host_data(release)`` is sha256 of the RFC 8785 form of
``Release.host_data_record()`` — the release's version, sequence, artifact and dm-verity
parameters — which the host passes at launch (QEMU ``sev-snp-guest,host-data=``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime

from attest.manifest.canonical import canonicalize
from attest.manifest.evaluate import ReleaseStatus, evaluate_release
from attest.manifest.model import Release, SnpLaunch, VerifiedRegistry
from attest.snp.findings import Finding, SnpCheck
from attest.snp.policy import SnpDecision, VerifiedCrl, evaluate_snp_policy
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


def appraise_snp_release(
    vr: VerifiedReport,
    registry: VerifiedRegistry,
    *,
    version: str | None,
    crl: VerifiedCrl | None,
    now: datetime,
) -> SnpReleaseAppraisal:
    """Appraise a verified report against release ``version`` of the registry, or (None) the
    release whose blessed launch has the report's MEASUREMENT.

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
    if release.snp.bind_host_data:
        want = release_host_data(release)
        if vr.report.host_data != want:
            msg = (
                f"HOST_DATA {vr.report.host_data.hex()} is not release {release.version}'s "
                f"record digest {want.hex()}"
            )
            refusals.append(Finding(SnpCheck.HOST_DATA, msg))
    # the measurement and HOST_DATA are checked above, with their explanations
    policy = replace(release.snp.policy, allowed_measurements=None, expected_host_data=None)
    decision = evaluate_snp_policy(vr, policy, crl=crl, now=now)
    return SnpReleaseAppraisal(
        release,
        launch,
        SnpDecision(
            refusals=tuple(refusals) + decision.refusals,
            warnings=tuple(warnings) + decision.warnings,
        ),
    )
