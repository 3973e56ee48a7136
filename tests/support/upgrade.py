"""Shared fixtures for the upgrade-gate tests: real images with real dm-verity parameters,
registry snapshots signed with the TEST keys of ``firmware_manifests/test``, a gate over a
``LocalNode`` with a fake TPM, and a fault hook that "kills" the process at a chosen boundary."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from tests.support.manifest import Signer, sign_doc

from attest.manifest.edit import checked
from attest.manifest.model import RegistrySnapshot, Release, Revocation, RollbackAuthorisation
from attest.node.broker.local import LocalNode
from attest.node.tpm.fake import FakeTpm
from attest.node.upgrade.slots import FaultHook, SlotStore, no_faults
from attest.node.upgrade.stager import LocalGateNode, Offer, UpgradeGate
from attest.verity.hashtree import hash_image

REPO = Path(__file__).resolve().parents[2]
TEST_TRUST = REPO / "firmware_manifests" / "test"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
EXPIRES = datetime(2035, 1, 1, tzinfo=UTC)
BLOCK = 4096


def test_signer(name: str) -> Signer:
    data = (TEST_TRUST / "keys" / f"TEST-ONLY-{name}.pem").read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    assert not isinstance(key, str)
    return Signer(key)  # type: ignore[arg-type]


def releases_signers() -> list[Signer]:
    return [test_signer(f"releases-{i}") for i in (1, 2, 3)]


def image_bytes(version: str, blocks: int) -> bytes:
    """Deterministic image content (a stand-in for a squashfs root)."""
    seed = hashlib.sha256(f"attest upgrade test image {version}".encode()).digest()
    out = bytearray()
    i = 0
    while len(out) < blocks * BLOCK:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest() * 4
        i += 1
    return bytes(out[: blocks * BLOCK])


@dataclass
class Image:
    version: str
    path: Path
    release: Release


def make_image(
    work: Path, version: str, sequence: int, *, blocks: int = 64, salt: bytes | None = None
) -> Image:
    """An image file and its release, blessed with real dm-verity parameters."""
    path = work / f"{version}.img"
    path.write_bytes(image_bytes(version, blocks))
    salt = salt if salt is not None else hashlib.sha256(f"salt {version}".encode()).digest()
    d = hash_image(path, salt=salt)
    rel = Release(
        version=version,
        sequence=sequence,
        artifact_sha256=d.sha256,
        artifact_size=d.size,
        verity=d.verity,
        blessed_at=NOW - timedelta(days=1),
        source_commit=hashlib.sha1(version.encode()).digest(),
    )
    return Image(version, path, rel)


def snapshot(
    seq: int,
    releases: Iterable[Release],
    *,
    expires: datetime = EXPIRES,
    rollbacks: Iterable[tuple[str, str]] = (),
    revoked: Iterable[str] = (),
) -> RegistrySnapshot:
    rels = {r.version: r for r in releases}
    revs = {
        v: Revocation(v, rels[v].artifact_sha256, "TEST: vulnerable", NOW - timedelta(hours=1))
        for v in revoked
    }
    rbs = tuple(RollbackAuthorisation(a, b, "TEST: emergency") for a, b in rollbacks)
    return checked(
        RegistrySnapshot(
            sequence=seq, expires=expires, releases=rels, revocations=revs, rollbacks=rbs
        )
    )


def signed(snap: RegistrySnapshot, signers: Iterable[Signer] | None = None) -> bytes:
    return sign_doc(snap.to_json(), releases_signers()[:2] if signers is None else signers)


def veritysetup_tree(image: Path, salt: bytes, out: Path) -> bytes | None:
    """The hash tree ``veritysetup format`` writes for ``image`` (None without veritysetup)."""
    if shutil.which("veritysetup") is None:
        return None
    subprocess.run(
        ["veritysetup", "format", str(image), str(out), f"--salt={salt.hex()}"],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


class Killed(BaseException):
    """The process "dies" here (a BaseException, so no ``except Exception`` swallows it)."""


@dataclass
class KillAt:
    """A fault hook: records every boundary; raises ``Killed`` at call number ``at``."""

    at: int | None = None
    seen: list[str] = field(default_factory=list)

    def __call__(self, boundary: str) -> None:
        self.seen.append(boundary)
        if self.at is not None and len(self.seen) - 1 == self.at:
            raise Killed(boundary)


@dataclass
class Node:
    """A node's persistent state in ``root``: TPM (fake, survives "crashes" like a real TPM),
    runtime/audit logs, slots, trust dir."""

    root: Path
    tpm: FakeTpm

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def open(
        self, hook: FaultHook = no_faults, *, capacity: int = 64 << 20, write_chunk: int = 64 * 1024
    ) -> tuple[UpgradeGate, LocalNode]:
        """Open everything from disk, as a fresh process would."""
        self.tpm.closed = False
        local = LocalNode.open(self.tpm, self.root / "state")
        slots = SlotStore(self.slots_dir, capacity=capacity, hook=hook, write_chunk=write_chunk)
        return UpgradeGate(slots, LocalGateNode(local), self.trust_dir, hook=hook), local


def new_node(root: Path) -> Node:
    root.mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    trust = root / "trust"
    trust.mkdir(exist_ok=True)
    shutil.copy(TEST_TRUST / "root.json", trust / "root.json")
    return Node(root, FakeTpm())


def offer(img: Image, snap_bytes: bytes, /, **kw: object) -> Offer:
    """The offer of ``img`` with ``snap_bytes``; keyword arguments replace Offer fields."""
    return replace(Offer(img.path, snap_bytes), **kw)  # type: ignore[arg-type]
