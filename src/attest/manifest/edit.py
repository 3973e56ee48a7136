"""Pure edits of trust roots and registry drafts (used by ``attest manifest``).

Every edit returns a new document and re-validates it with the same strict reader that
verification uses, so an edit can never produce a document a node would refuse to parse.
Editing a *signed* registry starts the next draft: sequence + 1, signatures dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from attest.errors import ManifestFormatError
from attest.manifest.envelope import Key, UnverifiedEnvelope
from attest.manifest.model import (
    ROLE_PLATFORM,
    ROLE_RELEASES,
    ROLE_ROOT,
    BlessedPolicies,
    Embargo,
    PlatformReference,
    RegistrySnapshot,
    Release,
    ReleaseSnp,
    Revocation,
    Role,
    RollbackAuthorisation,
    SignedPlatformReference,
    SnpLaunch,
    TrustRoot,
)
from attest.manifest.parse import parse_registry_signed, parse_root_signed
from attest.snp.policy import SnpPolicy


def new_root(
    *,
    version: int,
    expires: datetime,
    role_keys: Mapping[str, Sequence[Key]],
    thresholds: Mapping[str, int],
) -> TrustRoot:
    keys: dict[str, Key] = {}
    roles: dict[str, Role] = {}
    for name in (ROLE_ROOT, ROLE_RELEASES, ROLE_PLATFORM):
        ids = []
        for k in role_keys.get(name, ()):
            keys[k.keyid] = k
            ids.append(k.keyid)
        roles[name] = Role(tuple(sorted(set(ids))), thresholds.get(name, 1))
    root = TrustRoot(version=version, expires=expires, keys=dict(sorted(keys.items())), roles=roles)
    return parse_root_signed(root.to_json())


def checked(snapshot: RegistrySnapshot) -> RegistrySnapshot:
    return parse_registry_signed(snapshot.to_json())


def next_draft(env: UnverifiedEnvelope, snapshot: RegistrySnapshot) -> RegistrySnapshot:
    """The snapshot to edit: a signed (published) snapshot moves to the next sequence."""
    if env.signatures:
        return replace(snapshot, sequence=snapshot.sequence + 1)
    return snapshot


def empty_registry(*, expires: datetime, sequence: int = 1) -> RegistrySnapshot:
    return checked(RegistrySnapshot(sequence=sequence, expires=expires))


def bless(snapshot: RegistrySnapshot, release: Release) -> RegistrySnapshot:
    if release.version in snapshot.releases:
        raise ManifestFormatError(f"release {release.version} is already in the registry")
    return checked(replace(snapshot, releases={**snapshot.releases, release.version: release}))


def next_release_sequence(snapshot: RegistrySnapshot) -> int:
    return max((r.sequence for r in snapshot.releases.values()), default=0) + 1


def _release(snapshot: RegistrySnapshot, version: str) -> Release:
    try:
        return snapshot.releases[version]
    except KeyError:
        raise ManifestFormatError(f"no release {version} in the registry") from None


def revoke(
    snapshot: RegistrySnapshot, version: str, *, reason: str, at: datetime
) -> RegistrySnapshot:
    rel = _release(snapshot, version)
    rev = Revocation(version, rel.artifact_sha256, reason, at)
    return checked(replace(snapshot, revocations={**snapshot.revocations, version: rev}))


def allow_rollback(
    snapshot: RegistrySnapshot, from_version: str, to_version: str, *, reason: str
) -> RegistrySnapshot:
    rule = RollbackAuthorisation(from_version, to_version, reason)
    return checked(replace(snapshot, rollbacks=(*snapshot.rollbacks, rule)))


def disclose(
    snapshot: RegistrySnapshot, version: str, *, commit: bytes, at: datetime
) -> RegistrySnapshot:
    rel = _release(snapshot, version)
    if rel.embargo is None or rel.embargo.disclosed_at is not None:
        raise ManifestFormatError(f"release {version} is not under an undisclosed embargo")
    new = replace(rel, source_commit=commit, embargo=replace(rel.embargo, disclosed_at=at))
    return checked(replace(snapshot, releases={**snapshot.releases, version: new}))


def fleet_complete(snapshot: RegistrySnapshot, version: str, *, at: datetime) -> RegistrySnapshot:
    """Start the embargo clock: the whole fleet runs ``version`` since ``at``."""
    rel = _release(snapshot, version)
    if rel.embargo is None:
        raise ManifestFormatError(f"release {version} is not embargoed")
    if rel.embargo.fleet_complete_at is not None:
        raise ManifestFormatError(f"release {version}: the quiet period already started")
    new = replace(rel, embargo=replace(rel.embargo, fleet_complete_at=at))
    return checked(replace(snapshot, releases={**snapshot.releases, version: new}))


def policies(
    *, mac: Mapping[str, bytes] | None, config: Sequence[bytes] | None
) -> BlessedPolicies | None:
    """The policies to bless (None when neither is given): ``mac`` empty means "no MAC policy
    expected"; config digests are sorted and de-duplicated (the document's one spelling)."""
    if mac is None and not config:
        return None
    return BlessedPolicies(
        mac=None if mac is None else dict(sorted(mac.items())),
        config=tuple(sorted(set(config))) if config else None,
    )


def set_policies(
    snapshot: RegistrySnapshot, version: str, blessed: BlessedPolicies | None
) -> RegistrySnapshot:
    """Bless (or, with None, stop blessing) the runtime policy of an existing release."""
    rel = _release(snapshot, version)
    new = replace(rel, policies=blessed)
    return checked(replace(snapshot, releases={**snapshot.releases, version: new}))


def with_snp_launch(
    current: ReleaseSnp | None,
    launch: SnpLaunch,
    *,
    policy: SnpPolicy | None = None,
    bind_host_data: bool | None = None,
) -> ReleaseSnp:
    """A release's SNP section with ``launch`` added (in the document's order) and, when given,
    the policy / host-data binding replaced; a launch of the same slot, vCPU type and count
    is refused rather than overwritten."""
    base = current or ReleaseSnp(launches=())
    if any(existing.key == launch.key for existing in base.launches):
        slot, vcpu_type, vcpus = launch.key
        raise ManifestFormatError(
            f"a launch of slot {slot} with {vcpus} x {vcpu_type} is already blessed"
        )
    return replace(
        base,
        launches=tuple(sorted((*base.launches, launch), key=lambda x: x.key)),
        policy=base.policy if policy is None else policy,
        bind_host_data=base.bind_host_data if bind_host_data is None else bind_host_data,
    )


def add_snp_launch(
    snapshot: RegistrySnapshot,
    version: str,
    launch: SnpLaunch,
    *,
    policy: SnpPolicy | None = None,
    bind_host_data: bool | None = None,
) -> RegistrySnapshot:
    """Bless one more SEV-SNP launch (e.g. the other A/B slot) of an existing release."""
    rel = _release(snapshot, version)
    snp = with_snp_launch(rel.snp, launch, policy=policy, bind_host_data=bind_host_data)
    new = replace(rel, snp=snp)
    return checked(replace(snapshot, releases={**snapshot.releases, version: new}))


def set_snp_policy(
    snapshot: RegistrySnapshot, version: str, policy: SnpPolicy, *, bind_host_data: bool
) -> RegistrySnapshot:
    """Replace the SNP policy (and HOST_DATA binding) of a release that blesses SNP launches,
    keeping its launches."""
    rel = _release(snapshot, version)
    if rel.snp is None:
        raise ManifestFormatError(
            f"release {version} blesses no SEV-SNP launch (attest manifest snp-launch first)"
        )
    new = replace(rel, snp=replace(rel.snp, policy=policy, bind_host_data=bind_host_data))
    return checked(replace(snapshot, releases={**snapshot.releases, version: new}))


def embargo(quiet_period_days: int) -> Embargo:
    return Embargo(quiet_period_days=quiet_period_days)


def set_platform(snapshot: RegistrySnapshot, reference: PlatformReference) -> RegistrySnapshot:
    signed = SignedPlatformReference(reference, ())
    return checked(
        replace(snapshot, platforms={**snapshot.platforms, reference.platform_id: signed})
    )


def with_platform_signature(
    snapshot: RegistrySnapshot, platform_id: str, keyid: str, sig: bytes
) -> RegistrySnapshot:
    try:
        current = snapshot.platforms[platform_id]
    except KeyError:
        raise ManifestFormatError(f"no platform reference {platform_id}") from None
    env = UnverifiedEnvelope(current.reference.to_json(), current.signatures)
    env = env.with_signature(keyid, sig)
    new = SignedPlatformReference(current.reference, env.signatures)
    return replace(snapshot, platforms={**snapshot.platforms, platform_id: new})
