"""Typed values of the trust root and the blessed registry (frozen; no I/O).

``to_json`` gives the document form (hex digests, RFC 3339 UTC times); ``attest.manifest.parse``
is the strict reader that builds these from untrusted JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from attest.manifest.envelope import Key, Signature
from attest.model import PcrValues
from attest.snp.policy import SnpPolicy

SPEC_VERSION = "1"
ROLE_ROOT = "root"
ROLE_RELEASES = "releases"  # blesses OS releases: signs the registry snapshot
ROLE_PLATFORM = "platform"  # signs platform firmware references
ROLES = (ROLE_ROOT, ROLE_RELEASES, ROLE_PLATFORM)
DEFAULT_QUIET_PERIOD_DAYS = 10
MAC_NONE = "none"  # policies.mac: no mandatory access control policy is expected


def format_time(t: datetime) -> str:
    """RFC 3339, UTC, whole seconds: ``2036-01-01T00:00:00Z``."""
    if t.tzinfo is None:
        raise ValueError("naive datetime: pass an aware (UTC) time")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int

    def to_json(self) -> dict[str, Any]:
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class TrustRoot:
    """Keys and roles. A new root needs the threshold of the old *and* of its own root role."""

    version: int
    expires: datetime
    keys: Mapping[str, Key]
    roles: Mapping[str, Role]

    def role(self, name: str) -> Role:
        return self.roles[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": format_time(self.expires),
            "keys": {kid: k.to_json() for kid, k in self.keys.items()},
            "roles": {name: r.to_json() for name, r in self.roles.items()},
        }


@dataclass(frozen=True, slots=True)
class VerityParams:
    """dm-verity hash-tree parameters (format 1) and its root hash."""

    root_hash: bytes
    salt: bytes
    hash_algorithm: str = "sha256"
    data_block_size: int = 4096
    hash_block_size: int = 4096
    data_blocks: int = 0
    format: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "root_hash": self.root_hash.hex(),
            "salt": self.salt.hex(),
            "hash_algorithm": self.hash_algorithm,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
            "format": self.format,
        }


@dataclass(frozen=True, slots=True)
class Embargo:
    """A checksum-only blessing. The quiet period starts when the whole fleet runs the release
    (``fleet_complete_at``); disclosure is due ``quiet_period_days`` later."""

    quiet_period_days: int = DEFAULT_QUIET_PERIOD_DAYS
    fleet_complete_at: datetime | None = None
    disclosed_at: datetime | None = None

    @property
    def disclosure_due(self) -> datetime | None:
        if self.fleet_complete_at is None:
            return None
        return self.fleet_complete_at + timedelta(days=self.quiet_period_days)

    def to_json(self) -> dict[str, Any]:
        return {
            "quiet_period_days": self.quiet_period_days,
            "fleet_complete_at": _opt_time(self.fleet_complete_at),
            "disclosed_at": _opt_time(self.disclosed_at),
        }


def _opt_time(t: datetime | None) -> str | None:
    return None if t is None else format_time(t)


@dataclass(frozen=True, slots=True)
class BlessedPolicies:
    """The runtime policy a release blesses, compared with the node's runtime log
    (``attest.appraisal.checks.BlessedPolicyCheck``): the latest ``policy`` event (the loaded MAC
    policy) and the latest ``config`` event (attestd's configuration digest).

    ``mac``: None = not checked; empty = no MAC policy expected (``"none"`` in the document);
    else MAC type (``selinux``, ...) -> sha256 of the loaded policy. ``config``: None = not
    checked; else the sorted attestd configuration digests allowed (e.g. one per deployment).
    """

    mac: Mapping[str, bytes] | None = None
    config: tuple[bytes, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mac is not None:
            out["mac"] = {k: v.hex() for k, v in self.mac.items()} if self.mac else MAC_NONE
        if self.config is not None:
            out["config"] = [d.hex() for d in self.config]
        return out


@dataclass(frozen=True, slots=True)
class SnpLaunch:
    """One blessed SEV-SNP launch of a release: the MEASUREMENT that ``sev-snp-measure``
    computed from these inputs (SNP mode, guest features 0x1). The inputs are recorded by their
    sha256 (``cmdline``: of its UTF-8 bytes, after ``{roothash}`` was substituted) so that a
    report whose MEASUREMENT differs can be explained by what its launch would have to differ
    in; kernel, initrd and cmdline are None for a launch measured without a kernel."""

    slot: str  # the boot variant: A/B slot, or "default"
    measurement: bytes  # 48 bytes
    vcpus: int
    vcpu_type: str  # sev-snp-measure's name: EPYC-v4, EPYC-Milan, EPYC-Genoa, ...
    ovmf_sha256: bytes
    kernel_sha256: bytes | None = None
    initrd_sha256: bytes | None = None
    cmdline_sha256: bytes | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """The document's order and identity: one launch per slot, vCPU type and count."""
        return (self.slot, self.vcpu_type, self.vcpus)

    def to_json(self) -> dict[str, Any]:
        def opt(d: bytes | None) -> str | None:
            return None if d is None else d.hex()

        return {
            "slot": self.slot,
            "measurement": self.measurement.hex(),
            "vcpus": self.vcpus,
            "vcpu_type": self.vcpu_type,
            "inputs": {
                "ovmf": self.ovmf_sha256.hex(),
                "kernel": opt(self.kernel_sha256),
                "initrd": opt(self.initrd_sha256),
                "cmdline": opt(self.cmdline_sha256),
            },
        }


@dataclass(frozen=True, slots=True)
class ReleaseSnp:
    """What a release blesses for confidential (SEV-SNP) guests: its launch measurements and
    the SNP policy its guests are appraised under (``attest.snp.release``).

    ``policy`` is the core's ``SnpPolicy``; in the registry its ``allow_debug`` is always False
    (a debuggable guest is never blessed) and its ``allowed_measurements`` / ``expected_host_data``
    are None: the appraisal derives them from ``launches`` and, with ``bind_host_data``, from
    the release's host-data record (``release_host_data``)."""

    launches: tuple[SnpLaunch, ...]
    policy: SnpPolicy = field(default_factory=SnpPolicy)
    bind_host_data: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "launches": [launch.to_json() for launch in self.launches],
            "policy": snp_policy_json(self.policy, bind_host_data=self.bind_host_data),
        }


def snp_policy_json(p: SnpPolicy, *, bind_host_data: bool) -> dict[str, Any]:
    """The registry form of an SNP policy (a release's ``snp.policy``, a platform's ``snp``)."""
    chips = None if p.allowed_chip_ids is None else sorted(c.hex() for c in p.allowed_chip_ids)
    return {
        "min_tcb": {str(prod): tcb.as_dict() for prod, tcb in p.min_tcb.items()},
        "min_report_version": p.min_report_version,
        "allow_migration_agent": p.allow_migration_agent,
        "allow_smt": p.allow_smt,
        "require_single_socket": p.require_single_socket,
        "vmpl": p.vmpl,
        "allowed_chip_ids": chips,
        "crl_missing": p.crl_missing.value,
        "bind_host_data": bind_host_data,
    }


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    sequence: int  # monotonic release number: anti-rollback compares these
    artifact_sha256: bytes
    artifact_size: int
    verity: VerityParams
    blessed_at: datetime
    source_commit: bytes | None = None
    embargo: Embargo | None = None
    boot_components: Mapping[str, bytes] = field(default_factory=dict)
    expected_pcrs: Mapping[str, Mapping[str, PcrValues]] = field(default_factory=dict)
    policies: BlessedPolicies | None = None  # None: the release blesses no runtime policy
    snp: ReleaseSnp | None = None  # None: the release blesses no SEV-SNP launch

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": self.version,
            "sequence": self.sequence,
            "artifact": {"sha256": self.artifact_sha256.hex(), "size": self.artifact_size},
            "verity": self.verity.to_json(),
            "blessed_at": format_time(self.blessed_at),
            "source": None if self.source_commit is None else {"commit": self.source_commit.hex()},
            "embargo": None if self.embargo is None else self.embargo.to_json(),
            "boot_components": {k: v.hex() for k, v in self.boot_components.items()},
            "expected_pcrs": {
                platform: {variant: pcrs.to_json() for variant, pcrs in variants.items()}
                for platform, variants in self.expected_pcrs.items()
            },
        }
        if self.policies is not None:  # optional: registries without it read as before
            doc["policies"] = self.policies.to_json()
        if self.snp is not None:  # optional, as policies
            doc["snp"] = self.snp.to_json()
        return doc

    def host_data_record(self) -> dict[str, Any]:
        """The part of the release an SNP guest's HOST_DATA binds (``bind_host_data``): its
        identity and image only, so that later edits of the release entry (disclosure, fleet
        completion, another blessed launch, policies) do not invalidate running guests."""
        return {
            "_type": "snp-host-data",
            "version": self.version,
            "sequence": self.sequence,
            "artifact": {"sha256": self.artifact_sha256.hex(), "size": self.artifact_size},
            "verity": self.verity.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Revocation:
    version: str
    artifact_sha256: bytes
    reason: str
    revoked_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact_sha256": self.artifact_sha256.hex(),
            "reason": self.reason,
            "revoked_at": format_time(self.revoked_at),
        }


@dataclass(frozen=True, slots=True)
class RollbackAuthorisation:
    from_version: str
    to_version: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_version, "to": self.to_version, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SecureBootExpectation:
    enabled: bool
    variables: Mapping[str, bytes] = field(default_factory=dict)  # name -> sha256 of the data

    def to_json(self) -> dict[str, Any]:
        variables = {k: v.hex() for k, v in self.variables.items()}
        return {"enabled": self.enabled, "variables": variables}


@dataclass(frozen=True, slots=True)
class PlatformReference:
    """Expected firmware measurements of one platform (PCRs 0–7)."""

    platform_id: str
    description: str
    pcrs: PcrValues
    event_digests: Mapping[str, Mapping[int, tuple[bytes, ...]]] = field(default_factory=dict)
    secure_boot: SecureBootExpectation | None = None
    example: bool = False  # a placeholder that must not be relied on
    # the SEV-SNP policy of guests on this platform, on top of their release's (the stricter
    # of the two applies: ``attest.snp.policy.stricter``); None: the release's alone
    snp: SnpPolicy | None = None
    snp_bind_host_data: bool = False

    def to_json(self) -> dict[str, Any]:
        doc = self._json()
        if self.snp is not None:  # optional: references signed before it keep their form
            doc["snp"] = snp_policy_json(self.snp, bind_host_data=self.snp_bind_host_data)
        return doc

    def _json(self) -> dict[str, Any]:
        return {
            "_type": "platform",
            "spec_version": SPEC_VERSION,
            "platform_id": self.platform_id,
            "description": self.description,
            "example": self.example,
            "pcrs": self.pcrs.to_json(),
            "event_digests": {
                bank: {str(i): [d.hex() for d in ds] for i, ds in sorted(per.items())}
                for bank, per in self.event_digests.items()
            },
            "secure_boot": None if self.secure_boot is None else self.secure_boot.to_json(),
        }


@dataclass(frozen=True, slots=True)
class SignedPlatformReference:
    """A platform reference and the signatures (by the platform role) over its canonical form."""

    reference: PlatformReference
    signatures: tuple[Signature, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "signed": self.reference.to_json(),
            "signatures": [s.to_json() for s in self.signatures],
        }


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The blessed registry: one document, one sequence number, one expiry."""

    sequence: int
    expires: datetime
    releases: Mapping[str, Release] = field(default_factory=dict)
    revocations: Mapping[str, Revocation] = field(default_factory=dict)
    rollbacks: tuple[RollbackAuthorisation, ...] = ()
    platforms: Mapping[str, SignedPlatformReference] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": "registry",
            "spec_version": SPEC_VERSION,
            "sequence": self.sequence,
            "expires": format_time(self.expires),
            "releases": {v: r.to_json() for v, r in self.releases.items()},
            "revoked": {v: r.to_json() for v, r in self.revocations.items()},
            "rollbacks": [r.to_json() for r in self.rollbacks],
            "platforms": {p: s.to_json() for p, s in self.platforms.items()},
        }

    def release_by_sequence(self, sequence: int) -> Release | None:
        for r in self.releases.values():
            if r.sequence == sequence:
                return r
        return None


@dataclass(frozen=True, slots=True)
class VerifiedRoot:
    """A trust root whose root-role threshold was checked; ``raw`` is its canonical file."""

    root: TrustRoot
    raw: bytes


@dataclass(frozen=True, slots=True)
class VerifiedRegistry:
    """A registry snapshot signed by the threshold of the releases role, each platform reference
    by the threshold of the platform role; ``raw`` is its canonical file."""

    snapshot: RegistrySnapshot
    raw: bytes
    signers: frozenset[str]
