"""Decisions over a verified registry: is this image blessed? may we go from X to Y?

``evaluate_*`` return a decision that says what and why; they never raise for a "no".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.errors import NotBlessedError
from attest.manifest.model import RegistrySnapshot, Release, VerifiedRegistry, format_time


class ReleaseStatus(enum.Enum):
    BLESSED = "blessed"
    NOT_BLESSED = "not_blessed"
    REVOKED = "revoked"
    EMBARGOED_OVERDUE = "embargoed_overdue"  # blessed by checksum, disclosure past due


class EmbargoState(enum.Enum):
    NONE = "none"  # source public from the start
    AWAITING_FLEET = "awaiting_fleet"  # quiet period not started: fleet not fully upgraded yet
    QUIET_PERIOD = "quiet_period"  # clock running, disclosure not yet due
    OVERDUE = "overdue"  # disclosure due date passed without disclosure
    DISCLOSED = "disclosed"


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    status: ReleaseStatus
    reasons: tuple[str, ...]
    release: Release | None = None
    embargo: EmbargoState = EmbargoState.NONE
    disclosure_due: datetime | None = None

    @property
    def ok(self) -> bool:
        """True only for BLESSED. Appraisal policy may choose to tolerate EMBARGOED_OVERDUE
        (the image is governance-blessed; the overdue disclosure is governance's debt)."""
        return self.status is ReleaseStatus.BLESSED

    def require_blessed(self) -> Release:
        if not self.ok or self.release is None:
            raise NotBlessedError("; ".join(self.reasons))
        return self.release

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "version": None if self.release is None else self.release.version,
            "sequence": None if self.release is None else self.release.sequence,
            "embargo": self.embargo.value,
            "disclosure_due": None
            if self.disclosure_due is None
            else format_time(self.disclosure_due),
            "reasons": list(self.reasons),
        }


def embargo_state(release: Release, *, now: datetime) -> EmbargoState:
    e = release.embargo
    if e is None:
        return EmbargoState.NONE
    if e.disclosed_at is not None:
        return EmbargoState.DISCLOSED
    due = e.disclosure_due
    if due is None:
        return EmbargoState.AWAITING_FLEET
    return EmbargoState.OVERDUE if now > due else EmbargoState.QUIET_PERIOD


def _snapshot(registry: VerifiedRegistry | RegistrySnapshot) -> RegistrySnapshot:
    return registry.snapshot if isinstance(registry, VerifiedRegistry) else registry


def evaluate_release(
    registry: VerifiedRegistry,
    *,
    artifact_sha256: bytes | None = None,
    verity_root_hash: bytes | None = None,
    now: datetime,
) -> ReleaseDecision:
    """Is the image with this artifact digest and/or dm-verity root hash blessed at ``now``?

    Give both when both are known (the upgrade gate): they must name the *same* release — an
    artifact of one release with the verity tree of another is not blessed (mix and match).
    The verifier of a running node usually knows only the verity root hash.
    """
    if artifact_sha256 is None and verity_root_hash is None:
        raise ValueError("give artifact_sha256, verity_root_hash or both")
    snap = _snapshot(registry)
    by_art = by_verity = None
    for r in snap.releases.values():
        if artifact_sha256 is not None and r.artifact_sha256 == artifact_sha256:
            by_art = r
        if verity_root_hash is not None and r.verity.root_hash == verity_root_hash:
            by_verity = r
    where = f"registry #{snap.sequence}"

    # Revocations match by artifact even when the release entry is gone.
    for rev in snap.revocations.values():
        hit = (artifact_sha256 is not None and rev.artifact_sha256 == artifact_sha256) or (
            by_verity is not None and by_verity.version == rev.version
        )
        if hit:
            rel = snap.releases.get(rev.version)
            return ReleaseDecision(
                ReleaseStatus.REVOKED,
                (
                    f"release {rev.version} was revoked at {format_time(rev.revoked_at)}: "
                    f"{rev.reason}",
                ),
                release=rel,
            )

    if artifact_sha256 is not None and by_art is None:
        return ReleaseDecision(
            ReleaseStatus.NOT_BLESSED,
            (f"artifact sha256 {artifact_sha256.hex()} is not in {where}",),
        )
    if verity_root_hash is not None and by_verity is None:
        return ReleaseDecision(
            ReleaseStatus.NOT_BLESSED,
            (f"dm-verity root hash {verity_root_hash.hex()} is not in {where}",),
        )
    if by_art is not None and by_verity is not None and by_art is not by_verity:
        return ReleaseDecision(
            ReleaseStatus.NOT_BLESSED,
            (
                f"artifact is release {by_art.version} but the dm-verity root hash is release "
                f"{by_verity.version}'s",
            ),
        )
    release = by_art if by_art is not None else by_verity
    assert release is not None
    state = embargo_state(release, now=now)
    due = release.embargo.disclosure_due if release.embargo is not None else None
    reasons = [f"release {release.version} (#{release.sequence}) is blessed in {where}"]
    status = ReleaseStatus.BLESSED
    if state is EmbargoState.AWAITING_FLEET:
        reasons.append("embargoed: quiet period starts when the whole fleet runs it")
    elif state is EmbargoState.QUIET_PERIOD:
        assert due is not None
        reasons.append(f"embargoed: disclosure due {format_time(due)}")
    elif state is EmbargoState.OVERDUE:
        assert due is not None
        status = ReleaseStatus.EMBARGOED_OVERDUE
        reasons.append(f"embargoed: disclosure was due {format_time(due)} and has not happened")
    return ReleaseDecision(
        status, tuple(reasons), release=release, embargo=state, disclosure_due=due
    )


class RollbackKind(enum.Enum):
    UPGRADE = "upgrade"
    REINSTALL = "reinstall"
    AUTHORISED_ROLLBACK = "authorised_rollback"
    ROLLBACK = "rollback"  # refused
    UNKNOWN = "unknown"  # refused: cannot order


@dataclass(frozen=True, slots=True)
class RollbackDecision:
    allowed: bool
    kind: RollbackKind
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "kind": self.kind.value, "reason": self.reason}


def evaluate_rollback(
    registry: VerifiedRegistry,
    *,
    from_version: str,
    to_version: str,
    from_sequence: int | None = None,
) -> RollbackDecision:
    """May a node running ``from_version`` move to ``to_version``?

    Releases are ordered by their integer ``sequence``, never by version strings. Moving to a
    lower sequence is allowed only by an explicit rollback authorisation ``from → to`` in the
    registry. ``from_sequence`` orders an installed version that is no longer listed (it is
    ignored when ``from_version`` is listed). Whether ``to_version`` is blessed,
    revoked or embargoed is ``evaluate_release``'s question; a revoked target is refused here too.
    """
    snap = _snapshot(registry)
    target = snap.releases.get(to_version)
    if target is None:
        return RollbackDecision(
            False,
            RollbackKind.UNKNOWN,
            f"{to_version} is not a release in registry #{snap.sequence}",
        )
    if to_version in snap.revocations:
        return RollbackDecision(
            False,
            RollbackKind.ROLLBACK,
            f"{to_version} is revoked: {snap.revocations[to_version].reason}",
        )
    current = snap.releases.get(from_version)
    have = current.sequence if current is not None else from_sequence
    if have is None:
        return RollbackDecision(
            False,
            RollbackKind.UNKNOWN,
            f"installed {from_version} is not in registry #{snap.sequence} "
            "and no installed sequence was given",
        )
    if to_version == from_version:
        return RollbackDecision(True, RollbackKind.REINSTALL, f"{to_version} is installed")
    if target.sequence > have:
        return RollbackDecision(
            True, RollbackKind.UPGRADE, f"{to_version} (#{target.sequence}) is newer than #{have}"
        )
    if target.sequence == have:
        return RollbackDecision(
            True, RollbackKind.REINSTALL, f"{to_version} has the installed sequence #{have}"
        )
    for rule in snap.rollbacks:
        if rule.from_version == from_version and rule.to_version == to_version:
            return RollbackDecision(
                True,
                RollbackKind.AUTHORISED_ROLLBACK,
                f"rollback {from_version} -> {to_version} authorised: {rule.reason}",
            )
    return RollbackDecision(
        False,
        RollbackKind.ROLLBACK,
        f"{to_version} (#{target.sequence}) is older than #{have} and no "
        f"rollback from {from_version} to it is authorised",
    )
