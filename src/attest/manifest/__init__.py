"""Blessed manifests: the trust root, the registry snapshot, and their verification.

Pure core (no files, no clock): ``canonical`` (RFC 8785), ``envelope`` (keys, key ids,
signatures), ``parse`` (strict bounded readers), ``verify`` (thresholds, expiry), ``trusted``
(rollback / freeze rules), ``evaluate`` (blessed? rollback allowed?), ``edit`` (draft edits).
Adapter: ``store`` (the trusted state on disk).

Public API::

    verify_root_self_signed(data, *, now=None) -> VerifiedRoot
    verify_root_update(trusted: TrustRoot, data) -> VerifiedRoot
    verify_snapshot(root: TrustRoot, data, *, now) -> VerifiedRegistry
    TrustedState.bootstrap(root_bytes, *, now) / .load(root_bytes, registry_bytes)
    TrustedState.update_root(data) / .update_registry(data, *, now) / .check_fresh(*, now)
    evaluate_release(registry, *, artifact_sha256=None, verity_root_hash=None, now)
        -> ReleaseDecision
    evaluate_rollback(registry, *, from_version, to_version, from_sequence=None)
        -> RollbackDecision
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attest._lazy import lazy_attributes

if TYPE_CHECKING:
    from attest.manifest.canonical import canonicalize, parse_canonical, parse_json
    from attest.manifest.envelope import Key, UnverifiedEnvelope
    from attest.manifest.evaluate import (
        EmbargoState,
        ReleaseDecision,
        ReleaseStatus,
        RollbackDecision,
        RollbackKind,
        evaluate_release,
        evaluate_rollback,
    )
    from attest.manifest.model import (
        Embargo,
        PlatformReference,
        RegistrySnapshot,
        Release,
        Revocation,
        Role,
        RollbackAuthorisation,
        TrustRoot,
        VerifiedRegistry,
        VerifiedRoot,
        VerityParams,
    )
    from attest.manifest.parse import load_registry, load_root
    from attest.manifest.trusted import TrustedState
    from attest.manifest.verify import (
        verify_root_self_signed,
        verify_root_update,
        verify_snapshot,
        verify_snapshot_signatures,
    )

# Imported on first use (PEP 562): importing one submodule (``attest.manifest.canonical``, which
# the node's runtime and audit logs use) no longer loads the whole package, whose frozen
# dataclasses each generate their methods at import (a second of attestd's start under TCG).
_LAZY = {
    **dict.fromkeys(("canonicalize", "parse_canonical", "parse_json"), "attest.manifest.canonical"),
    **dict.fromkeys(("Key", "UnverifiedEnvelope"), "attest.manifest.envelope"),
    **dict.fromkeys(
        (
            "EmbargoState",
            "ReleaseDecision",
            "ReleaseStatus",
            "RollbackDecision",
            "RollbackKind",
            "evaluate_release",
            "evaluate_rollback",
        ),
        "attest.manifest.evaluate",
    ),
    **dict.fromkeys(
        (
            "Embargo",
            "PlatformReference",
            "RegistrySnapshot",
            "Release",
            "Revocation",
            "Role",
            "RollbackAuthorisation",
            "TrustRoot",
            "VerifiedRegistry",
            "VerifiedRoot",
            "VerityParams",
        ),
        "attest.manifest.model",
    ),
    **dict.fromkeys(("load_registry", "load_root"), "attest.manifest.parse"),
    **dict.fromkeys(("TrustedState",), "attest.manifest.trusted"),
    **dict.fromkeys(
        (
            "verify_root_self_signed",
            "verify_root_update",
            "verify_snapshot",
            "verify_snapshot_signatures",
        ),
        "attest.manifest.verify",
    ),
}


__all__ = [
    "Embargo",
    "EmbargoState",
    "Key",
    "PlatformReference",
    "RegistrySnapshot",
    "Release",
    "ReleaseDecision",
    "ReleaseStatus",
    "Revocation",
    "Role",
    "RollbackAuthorisation",
    "RollbackDecision",
    "RollbackKind",
    "TrustRoot",
    "TrustedState",
    "UnverifiedEnvelope",
    "VerifiedRegistry",
    "VerifiedRoot",
    "VerityParams",
    "canonicalize",
    "evaluate_release",
    "evaluate_rollback",
    "load_registry",
    "load_root",
    "parse_canonical",
    "parse_json",
    "verify_root_self_signed",
    "verify_root_update",
    "verify_snapshot",
    "verify_snapshot_signatures",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
