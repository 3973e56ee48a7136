"""The trusted state and its update rules (pure: bytes and ``now`` in, a new state out).

The state is the last verified root and the last verified registry snapshot, kept as their exact
bytes. Updating never mutates: each rule returns a new ``TrustedState`` or raises, so the caller
persists the new state only once it is fully verified (``attest.storage.trusted_state``).

Rules:

- root rotation: one version at a time, threshold of the old and the new root role
  (``verify_root_update``); the final root must not be expired when a registry is accepted
  (TUF §5.3.10, freeze attack);
- registry: threshold of the releases role; ``sequence`` lower than the trusted one →
  ``RollbackError``; equal → the bytes must be identical, else ``FreezeError`` (a forked feed);
  expired at ``now`` → ``ExpiredError``.
- After a root rotation the trusted snapshot is kept as the rollback floor even when the release
  keys changed. (TUF §5.3.11 deletes it to recover from a fast-forward attack; we prefer never
  to accept an older sequence, and recovery from stolen release keys that signed a huge
  sequence is an explicit operator action: delete the state file.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from attest.errors import FreezeError, RollbackError, ThresholdError
from attest.manifest.model import VerifiedRegistry, VerifiedRoot
from attest.manifest.parse import load_registry
from attest.manifest.verify import (
    check_expiry,
    verify_root_self_signed,
    verify_root_update,
    verify_snapshot,
    verify_snapshot_signatures,
)

logger = logging.getLogger(__name__)

MAX_ROOT_STEPS = 32  # bound on the number of rotations accepted in one update (TUF §5.3.3)


@dataclass(frozen=True, slots=True)
class TrustedState:
    """``registry`` is the last accepted snapshot *if it verifies under ``root``* (a rotation of
    the release keys invalidates it); ``floor_sequence`` / ``floor_raw`` always describe the last
    accepted snapshot, the rollback and freeze floor."""

    root: VerifiedRoot
    registry: VerifiedRegistry | None = None
    floor_sequence: int = 0
    floor_raw: bytes | None = None

    @classmethod
    def bootstrap(cls, root_bytes: bytes, *, now: datetime) -> TrustedState:
        """First use: a root obtained out of band (shipped in the image), self-signed and fresh."""
        return cls(verify_root_self_signed(root_bytes, now=now))

    @classmethod
    def load(cls, root_bytes: bytes, registry_bytes: bytes | None) -> TrustedState:
        """Rebuild persisted state. Signatures are re-checked; expiry is not (an expired trusted
        snapshot still serves as the rollback floor)."""
        root = verify_root_self_signed(root_bytes)
        if registry_bytes is None:
            return cls(root)
        _, snap = load_registry(registry_bytes)
        state = cls(root, None, snap.sequence, registry_bytes)
        return replace(state, registry=_still_valid(state.root, registry_bytes))

    def update_root(self, new_root_bytes: bytes) -> TrustedState:
        """Rotate to the next root version. Re-presenting the trusted root is a no-op."""
        if new_root_bytes == self.root.raw:
            return self
        new = verify_root_update(self.root.root, new_root_bytes)
        logger.info(
            "root rotated",
            extra={"from_version": self.root.root.version, "to_version": new.root.version},
        )
        registry = None if self.floor_raw is None else _still_valid(new, self.floor_raw)
        return replace(self, root=new, registry=registry)

    def update_roots(self, chain: list[bytes]) -> TrustedState:
        if len(chain) > MAX_ROOT_STEPS:
            raise FreezeError(f"{len(chain)} root versions in one update, limit {MAX_ROOT_STEPS}")
        state = self
        for data in chain:
            state = state.update_root(data)
        return state

    def update_registry(self, data: bytes, *, now: datetime) -> TrustedState:
        """Accept a newer (or the identical) registry snapshot, or raise."""
        root = self.root.root
        check_expiry(root.expires, now=now, what=f"trusted root v{root.version}")
        candidate = verify_snapshot(root, data, now=now)
        if self.floor_raw is not None:
            have, got = self.floor_sequence, candidate.snapshot.sequence
            if got < have:
                raise RollbackError(
                    f"registry sequence {got} is lower than the trusted {have}",
                    trusted=have,
                    got=got,
                )
            if got == have and data != self.floor_raw:
                raise FreezeError(
                    f"registry sequence {got} equals the trusted one but the bytes differ "
                    "(forked or replayed feed)"
                )
        logger.info("registry accepted", extra={"sequence": candidate.snapshot.sequence})
        return replace(
            self, registry=candidate, floor_sequence=candidate.snapshot.sequence, floor_raw=data
        )

    def check_fresh(self, *, now: datetime) -> VerifiedRegistry:
        """The trusted registry, if root and registry are unexpired at ``now``; raise otherwise."""
        root = self.root.root
        check_expiry(root.expires, now=now, what=f"trusted root v{root.version}")
        if self.registry is None:
            raise FreezeError(f"no registry snapshot verified under root v{root.version} yet")
        snap = self.registry.snapshot
        check_expiry(snap.expires, now=now, what=f"trusted registry #{snap.sequence}")
        return self.registry


def _still_valid(root: VerifiedRoot, registry_bytes: bytes) -> VerifiedRegistry | None:
    try:
        return verify_snapshot_signatures(root.root, registry_bytes)
    except ThresholdError:
        return None
