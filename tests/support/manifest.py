"""Helpers for the manifest tests: in-memory keys and documents signed on demand."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.envelope import Key, PrivateKey, UnverifiedEnvelope, sign
from attest.manifest.model import (
    Embargo,
    PlatformReference,
    RegistrySnapshot,
    Release,
    ReleaseSnp,
    SnpLaunch,
    TrustRoot,
    VerifiedRegistry,
    VerityParams,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)
FAR = datetime(2036, 1, 1, tzinfo=UTC)


@dataclass
class Signer:
    private: PrivateKey

    @property
    def key(self) -> Key:
        return Key.of_private(self.private)

    @property
    def keyid(self) -> str:
        return self.key.keyid


def make_signers(n: int) -> list[Signer]:
    out = []
    for i in range(n):
        priv: PrivateKey = (
            ed25519.Ed25519PrivateKey.generate()
            if i % 2 == 0
            else ec.generate_private_key(ec.SECP256R1())
        )
        out.append(Signer(priv))
    return out


def sign_doc(signed: dict[str, object], signers: Iterable[Signer]) -> bytes:
    env = UnverifiedEnvelope(signed, ())
    for s in signers:
        env = env.with_signature(s.keyid, sign(s.private, env.signed_bytes))
    return env.to_bytes()


def release(
    version: str, seq: int, *, embargo: Embargo | None = None, commit: bool = True
) -> Release:
    art = hashlib.sha256(f"artifact {version}".encode()).digest()
    return Release(
        version=version,
        sequence=seq,
        artifact_sha256=art,
        artifact_size=4096 * 3,
        verity=VerityParams(
            root_hash=hashlib.sha256(b"verity" + art).digest(), salt=b"\x01" * 32, data_blocks=3
        ),
        blessed_at=NOW - timedelta(days=30),
        source_commit=hashlib.sha1(version.encode()).digest() if commit else None,
        embargo=embargo,
    )


@dataclass
class World:
    root_signers: list[Signer]
    release_signers: list[Signer]
    platform_signers: list[Signer]
    root: TrustRoot

    def root_bytes(self, signers: Iterable[Signer] | None = None) -> bytes:
        return sign_doc(self.root.to_json(), self.root_signers if signers is None else signers)

    def snapshot(
        self,
        seq: int = 1,
        *,
        expires: datetime = FAR,
        releases: Iterable[Release] = (),
        platforms: Iterable[PlatformReference] = (),
    ) -> RegistrySnapshot:
        """A snapshot of ``releases`` (default 1.0.0 and 1.1.0) and ``platforms``, each
        platform reference signed by the first platform key."""
        rels = list(releases) or [release("1.0.0", 1), release("1.1.0", 2)]
        snap = edit.checked(
            RegistrySnapshot(sequence=seq, expires=expires, releases={r.version: r for r in rels})
        )
        signer = self.platform_signers[0]
        for ref in platforms:
            snap = edit.set_platform(snap, ref)
            sig = sign(signer.private, canonicalize(ref.to_json()))
            snap = edit.with_platform_signature(snap, ref.platform_id, signer.keyid, sig)
        return snap

    def registry_bytes(
        self, snap: RegistrySnapshot | None = None, signers: Iterable[Signer] | None = None
    ) -> bytes:
        snap = snap if snap is not None else self.snapshot()
        return sign_doc(snap.to_json(), self.release_signers[:2] if signers is None else signers)


def build_world(
    *,
    root_n: int = 3,
    root_t: int = 2,
    rel_n: int = 3,
    rel_t: int = 2,
    plat_n: int = 2,
    plat_t: int = 1,
    version: int = 1,
) -> World:
    rs, ls, ps = make_signers(root_n), make_signers(rel_n), make_signers(plat_n)
    root = edit.new_root(
        version=version,
        expires=FAR,
        role_keys={
            "root": [s.key for s in rs],
            "releases": [s.key for s in ls],
            "platform": [s.key for s in ps],
        },
        thresholds={"root": root_t, "releases": rel_t, "platform": plat_t},
    )
    return World(rs, ls, ps, root)


def snp_launch(slot: str = "a", *, vcpus: int = 4, measurement: bytes = b"\x11" * 48) -> SnpLaunch:
    return SnpLaunch(
        slot=slot,
        measurement=measurement,
        vcpus=vcpus,
        vcpu_type="EPYC-v4",
        ovmf_sha256=hashlib.sha256(b"ovmf").digest(),
        kernel_sha256=hashlib.sha256(b"kernel").digest(),
        initrd_sha256=hashlib.sha256(b"initrd").digest(),
        cmdline_sha256=hashlib.sha256(f"root=/dev/dm-0 slot={slot}".encode()).digest(),
    )


def snp_registry(version: str, measurement: bytes, *, sequence: int) -> VerifiedRegistry:
    """A verified registry (signers not checked) of one release whose slot-a SEV-SNP launch
    has ``measurement``."""
    rel = dataclasses.replace(
        release(version, 1), snp=ReleaseSnp(launches=(snp_launch("a", measurement=measurement),))
    )
    snap = edit.checked(
        RegistrySnapshot(sequence=sequence, expires=NOW.replace(year=2030), releases={version: rel})
    )
    return VerifiedRegistry(snapshot=snap, raw=b"", signers=frozenset())
