"""The upgrade gate's decisions (pure: typed values and ``now`` in, a ``GateDecision`` out).

``evaluate_upgrade`` decides whether an offered image may be installed, given what is
installed, the digests the gate measured over the image, the freshly verified registry, and the
TPM NV counter (the highest release sequence this node ever committed). ``evaluate_trust_error``
turns a failed trust refresh (``TrustedState.update_registry``) into a refusal. Nothing here
reads a file, the clock or the TPM; ``attest.node.upgrade.stager`` does, and calls these.

Every refusal carries a stable reason code (``REASONS``; ``docs/upgrade.md`` has the table) and a
message that says what differed. ``GateDecision.raise_if_refused`` raises ``UpgradeRefused``.

Anti-rollback (``docs/upgrade.md``, "Anti-rollback"): the installed sequence is
``max(state file, NV counter)`` -- a rolled-back state file cannot lower it, because the NV
counter only increments. An image with a lower sequence is accepted only when the registry
authorises exactly the pair *(the release at that highest sequence -> the candidate)*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attest.errors import (
    AttestError,
    EvidenceFormatError,
    ExpiredError,
    FreezeError,
    RollbackError,
    ThresholdError,
    UpgradeRefused,
    VerificationError,
)
from attest.manifest.evaluate import (
    EmbargoState,
    ReleaseStatus,
    RollbackKind,
    evaluate_release,
    evaluate_rollback,
)
from attest.manifest.model import Release, VerifiedRegistry, VerityParams

# --- reason codes ----------------------------------------------------------------------------

UPGRADE = "upgrade"
REINSTALL = "reinstall"
AUTHORISED_ROLLBACK = "authorised-rollback"
REGISTRY_UPDATED = "registry-updated"
REGISTRY_CURRENT = "registry-current"

UNKNOWN_ARTIFACT = "unknown-artifact"
SIZE_MISMATCH = "size-mismatch"
SHA256_MISMATCH = "sha256-mismatch"
VERITY_ROOT_MISMATCH = "verity-root-mismatch"
CORRUPTED_BLOCK = "corrupted-block"
SNAPSHOT_MALFORMED = "snapshot-malformed"
SNAPSHOT_UNSIGNED = "snapshot-unsigned"
SNAPSHOT_UNDER_THRESHOLD = "snapshot-under-threshold"
SNAPSHOT_EXPIRED = "snapshot-expired"
SNAPSHOT_ROLLBACK = "snapshot-rollback"
SNAPSHOT_FREEZE = "snapshot-freeze"
SNAPSHOT_INVALID = "snapshot-invalid"
REVOKED = "revoked"
ROLLBACK_UNAUTHORISED = "rollback-unauthorised"
ROLLBACK_OTHER_PAIR = "rollback-authorisation-mismatch"
IMAGE_TOO_LARGE = "image-too-large"
UPLOAD_TOO_LARGE = "upload-too-large"
UPLOAD_TIMEOUT = "upload-timeout"
NO_TRUST_ROOT = "no-trust-root"
PENDING_CONFIRMATION = "pending-confirmation"
WRITE_VERIFY_FAILED = "write-verify-failed"
SEQUENCE_JUMP = "sequence-jump"

# A TPM NV counter moves one step per TPM2_NV_Increment, and the gate's counter holds the
# committed release sequence: an upgrade costs (new - installed) increments. Registries number
# releases consecutively (`attest manifest bless` does); a larger jump is refused rather than
# spending minutes (and NV write endurance) on increments.
MAX_SEQUENCE_STEP = 1024

ACCEPT_REASONS = frozenset(
    {UPGRADE, REINSTALL, AUTHORISED_ROLLBACK, REGISTRY_UPDATED, REGISTRY_CURRENT}
)
REASONS: dict[str, str] = {
    UPGRADE: "accepted: a newer blessed release",
    REINSTALL: "accepted: the blessed release with the installed sequence",
    AUTHORISED_ROLLBACK: "accepted: an older release, authorised for exactly this pair",
    REGISTRY_UPDATED: "accepted (registry push): a newer registry snapshot is now trusted",
    REGISTRY_CURRENT: "accepted (registry push): the snapshot is the one already trusted",
    UNKNOWN_ARTIFACT: "the image (or the named version) is not a release of the registry",
    SIZE_MISMATCH: "the image size is not the blessed artifact size",
    SHA256_MISMATCH: "the image SHA-256 is not the blessed artifact digest",
    VERITY_ROOT_MISMATCH: "the dm-verity root hash over the image is not the blessed one",
    CORRUPTED_BLOCK: "a data block does not match the blessed hash tree (the block is named)",
    SNAPSHOT_MALFORMED: "the registry snapshot (or a root) does not parse",
    SNAPSHOT_UNSIGNED: "the registry snapshot carries no valid signature of the releases role",
    SNAPSHOT_UNDER_THRESHOLD: "the registry snapshot is signed by fewer keys than the threshold",
    SNAPSHOT_EXPIRED: "the registry snapshot (or the trusted root) has expired",
    SNAPSHOT_ROLLBACK: "the registry snapshot (or a root) is older than the trusted one",
    SNAPSHOT_FREEZE: "same sequence as the trusted snapshot but different bytes",
    SNAPSHOT_INVALID: "the registry snapshot failed another verification check",
    REVOKED: "the release is revoked",
    ROLLBACK_UNAUTHORISED: "an older release and no rollback authorisation names it",
    ROLLBACK_OTHER_PAIR: "a rollback to this release is authorised, but from another release",
    IMAGE_TOO_LARGE: "the image is larger than the inactive slot",
    UPLOAD_TOO_LARGE: "the upload exceeds the configured size limit",
    UPLOAD_TIMEOUT: "the upload did not arrive within the time limit (registry push)",
    NO_TRUST_ROOT: "the node has no trusted root (root.json in its trust directory) to verify by",
    PENDING_CONFIRMATION: "the node runs an unconfirmed upgrade: confirm it (or reboot) first",
    WRITE_VERIFY_FAILED: "the slot did not read back as the verified image",
    SEQUENCE_JUMP: "the release sequence is more than MAX_SEQUENCE_STEP above the installed one",
}


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstalledState:
    """What the slot pointer says is installed. ``sequence`` 0: nothing (a fresh node)."""

    version: str | None
    sequence: int
    slot_capacity: int
    booted_unconfirmed: bool = False  # running a staged slot that is not confirmed yet


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """The digests the gate measured over the offered image (one read): artifact SHA-256,
    size, and the dm-verity root hash computed with ``params`` (the salt and block sizes of the
    release the gate hashed it for). ``bad_block`` is the first data block whose digest differs
    from an offered hash tree that verified against the blessed root hash; ``hash_tree`` says
    whether a tree was offered and whether it verified ("absent", "trusted", "untrusted")."""

    sha256: bytes
    size: int
    verity_root_hash: bytes
    params: VerityParams
    requested_version: str | None = None
    bad_block: int | None = None
    hash_tree: str = "absent"


@dataclass(frozen=True, slots=True)
class GateDecision:
    accepted: bool
    reason: str
    message: str
    version: str | None = None
    release: Release | None = None
    kind: RollbackKind | None = None
    embargo: EmbargoState = EmbargoState.NONE
    facts: dict[str, Any] = field(default_factory=dict)

    def raise_if_refused(self) -> None:
        if not self.accepted:
            raise UpgradeRefused(self.reason, self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "message": self.message,
            "version": self.version,
            "sequence": None if self.release is None else self.release.sequence,
            "kind": None if self.kind is None else self.kind.value,
            "embargo": self.embargo.value,
            **self.facts,
        }


@dataclass(frozen=True, slots=True)
class RegistryRefresh:
    """The decision on a registry snapshot pushed without an image (``registry-updated`` or
    ``registry-current``; refusals are ``UpgradeRefused`` with the trust refresh's code)."""

    reason: str
    message: str
    previous_sequence: int
    sequence: int
    root_version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": True,
            "reason": self.reason,
            "message": self.message,
            "previous_sequence": self.previous_sequence,
            "sequence": self.sequence,
            "root_version": self.root_version,
        }


def evaluate_registry_refresh(
    previous_sequence: int,
    previous_root: int,
    trusted: VerifiedRegistry,
    *,
    root_version: int,
) -> RegistryRefresh:
    """Describe an accepted trust refresh (``TrustedState.update_registry`` already checked
    threshold, sequence, freeze and expiry): updated, or the snapshot already trusted."""
    seq = trusted.snapshot.sequence
    rotated = (
        f"; root rotated v{previous_root} -> v{root_version}"
        if root_version != previous_root
        else ""
    )
    if seq == previous_sequence:
        return RegistryRefresh(
            REGISTRY_CURRENT,
            f"registry #{seq} is the snapshot already trusted{rotated}",
            previous_sequence,
            seq,
            root_version,
        )
    return RegistryRefresh(
        REGISTRY_UPDATED,
        f"registry #{previous_sequence} -> #{seq}{rotated}",
        previous_sequence,
        seq,
        root_version,
    )


def refuse(reason: str, message: str, *, version: str | None = None, **facts: Any) -> GateDecision:
    if reason not in REASONS or reason in ACCEPT_REASONS:
        raise ValueError(f"not a refusal reason code: {reason!r}")
    return GateDecision(False, reason, message, version=version, facts=dict(facts))


# --- decisions -------------------------------------------------------------------------------


def evaluate_trust_error(exc: AttestError, *, version: str | None = None) -> GateDecision:
    """The refusal for a failed trust refresh (root rotation + registry snapshot)."""
    msg = str(exc)
    if isinstance(exc, ThresholdError):
        code = SNAPSHOT_UNSIGNED if exc.signed == 0 else SNAPSHOT_UNDER_THRESHOLD
        return refuse(code, msg, version=version)
    if isinstance(exc, ExpiredError):  # before FreezeError: ExpiredError is one
        return refuse(SNAPSHOT_EXPIRED, msg, version=version)
    if isinstance(exc, RollbackError):
        return refuse(SNAPSHOT_ROLLBACK, msg, version=version)
    if isinstance(exc, FreezeError):
        return refuse(SNAPSHOT_FREEZE, msg, version=version)
    if isinstance(exc, EvidenceFormatError):
        return refuse(SNAPSHOT_MALFORMED, msg, version=version)
    if isinstance(exc, VerificationError):
        return refuse(SNAPSHOT_INVALID, f"{exc.check}: {msg}", version=version)
    raise exc


def evaluate_precondition(
    current: InstalledState, *, size: int, version: str | None = None
) -> GateDecision | None:
    """Refusals that need no reading of the image: a refusal, or ``None`` to go on."""
    if current.booted_unconfirmed:
        return refuse(
            PENDING_CONFIRMATION,
            "the node runs a staged upgrade that is not confirmed: run `attest upgrade "
            "confirm` after a good boot (or reboot to fall back) before staging another",
            version=version,
        )
    if size > current.slot_capacity:
        return refuse(
            IMAGE_TOO_LARGE,
            f"image of {size} bytes does not fit the inactive slot ({current.slot_capacity} bytes)",
            version=version,
        )
    return None


def _target(candidate: VerifiedImage, trusted: VerifiedRegistry) -> Release | GateDecision:
    snap = trusted.snapshot
    where = f"registry #{snap.sequence}"
    if candidate.requested_version is not None:
        rel = snap.releases.get(candidate.requested_version)
        if rel is None:
            return refuse(
                UNKNOWN_ARTIFACT,
                f"version {candidate.requested_version} is not a release in {where}",
                version=candidate.requested_version,
            )
        return rel
    for rel in snap.releases.values():
        if rel.artifact_sha256 == candidate.sha256:
            return rel
    return refuse(
        UNKNOWN_ARTIFACT,
        f"artifact sha256 {candidate.sha256.hex()} ({candidate.size} bytes) is not a "
        f"release in {where}",
    )


def _image_checks(rel: Release, c: VerifiedImage) -> GateDecision | None:
    v = rel.version
    if c.size != rel.artifact_size:
        return refuse(
            SIZE_MISMATCH,
            f"image is {c.size} bytes; release {v} is {rel.artifact_size} bytes",
            version=v,
        )
    if (
        c.params.salt != rel.verity.salt
        or c.params.hash_algorithm != rel.verity.hash_algorithm
        or c.params.data_block_size != rel.verity.data_block_size
        or c.params.hash_block_size != rel.verity.hash_block_size
    ):
        raise ValueError("the image was hashed with other verity parameters than the release's")
    if c.verity_root_hash != rel.verity.root_hash:
        if c.bad_block is not None:
            dbs = rel.verity.data_block_size
            return refuse(
                CORRUPTED_BLOCK,
                f"data block {c.bad_block} (offset {c.bad_block * dbs}) does not match "
                f"the blessed hash tree of release {v}",
                version=v,
                bad_block=c.bad_block,
            )
        tree = {
            "absent": "no hash tree was offered to name the block",
            "trusted": "the offered hash tree matches every block, so the tree is not this image's",
            "untrusted": "the offered hash tree does not verify against the blessed root hash",
        }.get(c.hash_tree, c.hash_tree)
        same = "same" if c.sha256 == rel.artifact_sha256 else "different"
        return refuse(
            VERITY_ROOT_MISMATCH,
            f"dm-verity root hash {c.verity_root_hash.hex()} is not release {v}'s "
            f"{rel.verity.root_hash.hex()} ({same} artifact sha256; {tree})",
            version=v,
        )
    if c.sha256 != rel.artifact_sha256:
        return refuse(
            SHA256_MISMATCH,
            f"artifact sha256 {c.sha256.hex()} is not release {v}'s {rel.artifact_sha256.hex()}",
            version=v,
        )
    return None


def evaluate_upgrade(
    current: InstalledState,
    candidate: VerifiedImage,
    trusted: VerifiedRegistry,
    *,
    nv_counter: int,
    now: datetime,
) -> GateDecision:
    """May ``candidate`` be installed over ``current``?

    ``trusted`` is the registry after the trust refresh (threshold, sequence, expiry and root
    rotation already checked); ``nv_counter`` the highest release sequence the TPM NV counter
    records as committed. Checks, in order: pre-conditions (unconfirmed upgrade running, slot
    capacity); which release the image is (the named version, else the one with its sha256);
    size, dm-verity root (naming a corrupted block when a trusted hash tree was offered) and
    sha256 against that release; blessed and not revoked (``evaluate_release`` with both
    digests, so a mix-and-match of two releases is refused); anti-rollback.
    """
    pre = evaluate_precondition(current, size=candidate.size, version=candidate.requested_version)
    if pre is not None:
        return pre
    target = _target(candidate, trusted)
    if isinstance(target, GateDecision):
        return target
    bad = _image_checks(target, candidate)
    if bad is not None:
        return bad
    v = target.version
    rd = evaluate_release(
        trusted,
        artifact_sha256=candidate.sha256,
        verity_root_hash=candidate.verity_root_hash,
        now=now,
    )
    if rd.status is ReleaseStatus.REVOKED:
        return refuse(REVOKED, "; ".join(rd.reasons), version=v)
    if rd.status is ReleaseStatus.NOT_BLESSED or rd.release is None:
        return refuse(UNKNOWN_ARTIFACT, "; ".join(rd.reasons), version=v)
    # BLESSED or EMBARGOED_OVERDUE: both are governance-blessed; an overdue disclosure is
    # governance's debt, and refusing would keep a security patch off the node.

    snap = trusted.snapshot
    high = max(current.sequence, nv_counter)
    facts = {"installed_sequence": current.sequence, "nv_sequence": nv_counter}
    if target.sequence - high > MAX_SEQUENCE_STEP:
        return refuse(
            SEQUENCE_JUMP,
            f"release {v} (#{target.sequence}) is {target.sequence - high} sequence "
            f"numbers above the installed #{high}; the TPM NV counter that proves "
            f"the installed sequence moves one increment at a time (at most "
            f"{MAX_SEQUENCE_STEP} per upgrade): number releases consecutively",
            version=v,
            **facts,
        )
    if target.sequence >= high:
        kind = RollbackKind.UPGRADE if target.sequence > high else RollbackKind.REINSTALL
        code = UPGRADE if kind is RollbackKind.UPGRADE else REINSTALL
        msg = (
            f"release {v} (#{target.sequence}) is blessed in registry #{snap.sequence} and "
            f"{'newer than' if code == UPGRADE else 'the same sequence as'} the installed "
            f"#{high}"
        )
        return GateDecision(
            True, code, msg, version=v, release=target, kind=kind, embargo=rd.embargo, facts=facts
        )

    # Older than the highest committed sequence: only an authorisation from the release at
    # that sequence (the TPM's word, not the state file's) to exactly this one will do.
    from_rel = snap.release_by_sequence(high)
    if from_rel is not None:
        rb = evaluate_rollback(trusted, from_version=from_rel.version, to_version=v)
        if rb.allowed and rb.kind is RollbackKind.AUTHORISED_ROLLBACK:
            return GateDecision(
                True,
                AUTHORISED_ROLLBACK,
                rb.reason,
                version=v,
                release=target,
                kind=rb.kind,
                embargo=rd.embargo,
                facts=facts,
            )
    named = [r for r in snap.rollbacks if r.to_version == v]
    installed = from_rel.version if from_rel is not None else f"the release with sequence #{high}"
    why = ""
    if high > current.sequence:
        why = (
            f" (the state file says #{current.sequence}, but the TPM NV counter says "
            f"#{nv_counter} was committed)"
        )
    if named:
        pairs = ", ".join(f"{r.from_version} -> {r.to_version}" for r in named)
        return refuse(
            ROLLBACK_OTHER_PAIR,
            f"release {v} (#{target.sequence}) is older than the installed {installed} "
            f"(#{high}){why}; the registry authorises only {pairs}",
            version=v,
            **facts,
        )
    return refuse(
        ROLLBACK_UNAUTHORISED,
        f"release {v} (#{target.sequence}) is older than the installed {installed} "
        f"(#{high}){why} and no rollback to it is authorised",
        version=v,
        **facts,
    )
