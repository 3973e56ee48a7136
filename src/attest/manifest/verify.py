"""Signature-threshold verification of trust roots and registry snapshots (pure; ``now`` is an
argument).

The checks follow the TUF client workflow (TUF specification v1.0, §5.3 "Update the root role"
and §5.4–5.6 for the top-level targets metadata), adapted to our two documents:

- a root is trusted when the threshold of the *trusted* root's root role signed it and, for a
  rotation, the threshold of its *own* root role too (§5.3.4), and its version is exactly the
  trusted version + 1 (§5.3.5);
- a registry snapshot is trusted when the threshold of the releases role signed it; each platform
  reference inside it, when the threshold of the platform role signed it;
- thresholds count distinct authorised key ids (``envelope.count_valid``).
"""

from __future__ import annotations

from datetime import datetime

from attest.errors import ExpiredError, RollbackError, ThresholdError
from attest.manifest.envelope import UnverifiedEnvelope, count_valid
from attest.manifest.model import (
    ROLE_PLATFORM,
    ROLE_RELEASES,
    ROLE_ROOT,
    TrustRoot,
    VerifiedRegistry,
    VerifiedRoot,
    format_time,
)
from attest.manifest.parse import load_registry, load_root


def _check_now(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")


def check_threshold(
    envelope: UnverifiedEnvelope, *, trusted: TrustRoot, role: str, what: str
) -> frozenset[str]:
    """Return the distinct authorised signers, or raise ``ThresholdError``."""
    r = trusted.role(role)
    good = count_valid(envelope, keys=trusted.keys, authorised=r.keyids)
    if len(good) < r.threshold:
        raise ThresholdError(
            f"{what}: {len(good)} valid signature(s) by distinct {role} keys, "
            f"threshold {r.threshold}",
            signed=len(good),
            threshold=r.threshold,
        )
    return frozenset(good)


def check_expiry(expires: datetime, *, now: datetime, what: str) -> None:
    _check_now(now)
    if now >= expires:
        raise ExpiredError(f"{what} expired at {format_time(expires)} (now {format_time(now)})")


def verify_root_self_signed(data: bytes, *, now: datetime | None = None) -> VerifiedRoot:
    """A root trusted out of band (first boot, pinned in the image): its own root role's threshold
    must have signed it; when ``now`` is given it must not be expired."""
    env, root = load_root(data)
    check_threshold(env, trusted=root, role=ROLE_ROOT, what=f"root v{root.version}")
    if now is not None:
        check_expiry(root.expires, now=now, what=f"root v{root.version}")
    return VerifiedRoot(root, data)


def verify_root_update(trusted: TrustRoot, data: bytes) -> VerifiedRoot:
    """One step of root rotation (TUF §5.3.4–5.3.5). Expiry is *not* checked here: an
    intermediate root in a chain may have expired; the caller checks the final one (§5.3.10)."""
    env, new = load_root(data)
    what = f"root v{new.version}"
    check_threshold(
        env, trusted=trusted, role=ROLE_ROOT, what=f"{what} (by trusted root v{trusted.version})"
    )
    check_threshold(env, trusted=new, role=ROLE_ROOT, what=f"{what} (by its own root role)")
    if new.version != trusted.version + 1:
        raise RollbackError(
            f"root version {new.version} does not follow trusted version {trusted.version}",
            trusted=trusted.version,
            got=new.version,
        )
    return VerifiedRoot(new, data)


def verify_snapshot_signatures(root: TrustRoot, data: bytes) -> VerifiedRegistry:
    """Signatures only (releases role over the snapshot, platform role over each platform
    reference); no expiry. Used to re-check persisted state."""
    env, snap = load_registry(data)
    what = f"registry #{snap.sequence}"
    signers = check_threshold(env, trusted=root, role=ROLE_RELEASES, what=what)
    for pid, signed_ref in snap.platforms.items():
        penv = UnverifiedEnvelope(signed_ref.reference.to_json(), signed_ref.signatures)
        check_threshold(
            penv, trusted=root, role=ROLE_PLATFORM, what=f"{what} platform reference {pid}"
        )
    return VerifiedRegistry(snap, data, signers)


def verify_snapshot(root: TrustRoot, data: bytes, *, now: datetime) -> VerifiedRegistry:
    """A registry snapshot signed by the threshold of ``root``'s releases role, every platform
    reference by the threshold of its platform role, not expired at ``now``.

    Rollback and freeze against a *previously trusted* snapshot are the job of
    ``TrustedState.update_registry``, which calls this first.
    """
    _check_now(now)
    verified = verify_snapshot_signatures(root, data)
    snap = verified.snapshot
    check_expiry(snap.expires, now=now, what=f"registry #{snap.sequence}")
    return verified
