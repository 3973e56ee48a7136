"""``attest demo``'s release and its two refusals, each a real check:

- ``build_release``: a small release image (deterministic bytes) whose artifact sha256 and
  dm-verity root hash ``attest.verity.hashtree`` computes (the code of the upgrade gate), blessed
  as release 1.0.0 in a registry snapshot signed by the TEST releases keys of
  ``firmware_manifests/test`` and verified under its TEST root (never production keys);
- ``offer_unblessed``: an image nobody blessed, offered to the node's upgrade gate as an operator
  does (``POST /v1/upgrades`` on attestd's operator socket; attestd-tpm's gate decides);
- ``extend_behind_broker``: TPM2_PCR_Extend of the runtime PCR sent straight to the swtpm, not
  through attestd-tpm (what malware with TPM access does).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

import attest
from attest.errors import ConfigError, TpmError
from attest.manifest.edit import checked
from attest.manifest.envelope import Key, PrivateKey, UnverifiedEnvelope, sign
from attest.manifest.model import RegistrySnapshot, Release, VerifiedRegistry
from attest.manifest.verify import verify_root_self_signed, verify_snapshot
from attest.node.broker.client import BrokerClient
from attest.verity.hashtree import ImageDigests, hash_image

TEST_TRUST = Path(attest.__file__).resolve().parents[2] / "firmware_manifests" / "test"
RELEASE_KEYS = ("TEST-ONLY-releases-1.pem", "TEST-ONLY-releases-2.pem")  # threshold 2 of 3
VERSION = "1.0.0"
BLOCK = 4096
UPGRADE_TYPE = "application/vnd.attest.upgrade"


@dataclass(frozen=True, slots=True)
class DemoRelease:
    version: str
    image: Path
    digests: ImageDigests
    snapshot: bytes  # the signed registry snapshot (canonical JSON envelope)
    registry: VerifiedRegistry  # ... verified under the TEST root
    stray: Path  # a well-formed image no registry blesses


@dataclass(frozen=True, slots=True)
class UpgradeOffer:
    status: int  # HTTP status of POST /v1/upgrades
    check: str | None  # the gate's reason code (e.g. unknown-artifact)
    detail: str
    pointer_before: dict[str, Any]
    pointer_after: dict[str, Any]

    @property
    def refused(self) -> bool:
        return self.status == 409 and self.check is not None

    @property
    def pointer_unchanged(self) -> bool:
        return self.pointer_before == self.pointer_after


def image_bytes(label: str, blocks: int) -> bytes:
    """Deterministic image content (a stand-in for a squashfs root)."""
    seed = hashlib.sha256(f"attest demo image {label}".encode()).digest()
    return b"".join(
        hashlib.sha256(seed + i.to_bytes(8, "big")).digest() * (BLOCK // 32) for i in range(blocks)
    )


def _test_key(name: str) -> PrivateKey:
    path = TEST_TRUST / "keys" / name
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise ConfigError(
            f"{path}: {exc.strerror} (the demo signs with the TEST keys of a source checkout)",
            key="test-keys",
        ) from None
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 or ECDSA private key", key="test-keys")
    return key


def build_release(work: Path, *, now: datetime) -> DemoRelease:
    """Release 1.0.0 (384 KiB) and an unblessed image in ``work``, the registry blessing 1.0.0
    signed with the TEST keys and verified under the TEST root as ``attest verify --root
    --snapshot`` verifies it."""
    work.mkdir(parents=True, exist_ok=True)
    image, stray = work / f"{VERSION}.img", work / "9.9.9-unblessed.img"
    image.write_bytes(image_bytes(VERSION, 96))
    stray.write_bytes(image_bytes("9.9.9", 80))
    digests = hash_image(image, salt=hashlib.sha256(f"demo salt {VERSION}".encode()).digest())
    release = Release(
        version=VERSION,
        sequence=1,
        artifact_sha256=digests.sha256,
        artifact_size=digests.size,
        verity=digests.verity,
        blessed_at=now - timedelta(hours=1),
        source_commit=bytes(20),
    )
    now_s = now.replace(microsecond=0)
    snap = checked(
        RegistrySnapshot(
            sequence=1, expires=now_s + timedelta(days=30), releases={VERSION: release}
        )
    )
    env = UnverifiedEnvelope(snap.to_json(), ())
    for name in RELEASE_KEYS:
        key = _test_key(name)
        env = env.with_signature(Key.of_private(key).keyid, sign(key, env.signed_bytes))
    data = env.to_bytes()
    (work / "registry.json").write_bytes(data)
    root = verify_root_self_signed((TEST_TRUST / "root.json").read_bytes(), now=now)
    registry = verify_snapshot(root.root, data, now=now)
    return DemoRelease(VERSION, image, digests, data, registry, stray)


def offer_unblessed(rel: DemoRelease, api_socket: Path, broker_operator: Path) -> UpgradeOffer:
    """Offer ``rel.stray`` with the blessed snapshot to the node's upgrade gate; the slot
    pointer is read from attestd-tpm before and after."""
    import httpx  # only here: the rest of the demo does not need it

    with contextlib.closing(BrokerClient(str(broker_operator))) as broker:
        before = broker.upgrade_status().pointer.to_json()
        body = b"".join(
            (len(rel.snapshot).to_bytes(8, "big"), rel.snapshot, bytes(8), rel.stray.read_bytes())
        )
        transport = httpx.HTTPTransport(uds=str(api_socket))
        with httpx.Client(transport=transport, base_url="http://operator", timeout=60) as c:
            r = c.post("/v1/upgrades", content=body, headers={"Content-Type": UPGRADE_TYPE})
        after = broker.upgrade_status().pointer.to_json()
    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    check = doc.get("check") if isinstance(doc, dict) else None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return UpgradeOffer(
        r.status_code,
        check if isinstance(check, str) else None,
        detail if isinstance(detail, str) else r.text[:200],
        before,
        after,
    )


def extend_behind_broker(port: int, pcr: int, digest: bytes) -> None:
    """TPM2_PCR_Extend(pcr, sha256 ``digest``) sent to the swtpm on ``port`` (its own
    connection: attestd-tpm is not involved). Part 3 §22.2, one password session (empty)."""
    if len(digest) != 32:
        raise ValueError("a sha256 digest is 32 bytes")
    auth = (0x40000009).to_bytes(4, "big") + bytes(2) + bytes(1) + bytes(2)  # TPM_RS_PW
    params = (1).to_bytes(4, "big") + (0x000B).to_bytes(2, "big") + digest  # TPML_DIGEST_VALUES
    body = pcr.to_bytes(4, "big") + len(auth).to_bytes(4, "big") + auth + params
    cmd = (0x8002).to_bytes(2, "big") + (10 + len(body)).to_bytes(4, "big")
    cmd += (0x00000182).to_bytes(4, "big") + body  # TPM_ST_SESSIONS, TPM_CC_PCR_Extend
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(cmd)
        resp = s.recv(4096)
    rc = int.from_bytes(resp[6:10], "big") if len(resp) >= 10 else -1
    if rc != 0:
        raise TpmError(f"TPM2_PCR_Extend of PCR {pcr} on the swtpm failed (rc 0x{rc:x})")
