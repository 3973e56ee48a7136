"""What the harness's node trusts and what the harness signs with: the node's state disk
contents (slot pointer, trust root, TLS), the harness's private TLS CA for the mutual-TLS
upgrade channel, and registry snapshots blessing the harness's releases (for the node's upgrade
gate; for the verifier with the harness platform's reference too), signed with the TEST keys of
``firmware_manifests/test`` (never production keys).

The state disk (ext4, virtio serial ``state``), as the guest sees it under
``/var/lib/attest-state``::

    attest/slots/boot.json      attest.node.upgrade.slots pointer (the initramfs chooses the slot
    from it)
    attest/trust/root.json      the trust root the upgrade gate starts from (TEST root)
    attest/spool/               POST /v1/upgrades uploads (streamed here)
    attest/tls/node.pem|.key    the mutual-TLS listener's certificate (harness CA)
    attest/tls/client-ca.pem    the CA whose client certificates may upgrade (harness CA)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attest.manifest.canonical import canonicalize
from attest.manifest.edit import checked, set_platform, with_platform_signature
from attest.manifest.envelope import Key, PrivateKey, UnverifiedEnvelope, sign
from attest.manifest.model import (
    RegistrySnapshot,
    Release,
    RollbackAuthorisation,
    VerifiedRegistry,
    VerityParams,
)
from attest.manifest.parse import parse_platform_signed
from attest.manifest.verify import verify_root_self_signed, verify_snapshot
from attest.model import PcrValues
from attest.node.upgrade.slots import BootPointer, SlotImage, SlotStore

from . import REPO
from .build import PLATFORM_ID, NodeImage, release_sequence

TEST_TRUST = REPO / "firmware_manifests" / "test"
RELEASE_KEYS = ("TEST-ONLY-releases-1.pem", "TEST-ONLY-releases-2.pem")  # threshold 2
PLATFORM_KEY = "TEST-ONLY-platform-1.pem"  # the TEST root's platform threshold is 1
PLATFORM_REF = REPO / "firmware_manifests" / "platforms" / f"{PLATFORM_ID}.json"
STATE_DISK_MIB = 256  # the upload spool holds a whole image (~75 MB) while the gate reads it


def verity_params(image: NodeImage) -> VerityParams:
    return VerityParams(
        root_hash=bytes.fromhex(image.verity_root_hash),
        salt=bytes.fromhex(image.verity_salt),
        hash_algorithm="sha256",
        data_block_size=4096,
        hash_block_size=4096,
        data_blocks=image.root_size // 4096,
        format=1,
    )


def slot_image(image: NodeImage) -> SlotImage:
    return SlotImage(
        image.version,
        release_sequence(image.version),
        bytes.fromhex(image.root_sha256),
        image.root_size,
        verity_params(image),
    )


def initial_pointer(image: NodeImage) -> bytes:
    """boot.json as ``attest.node.upgrade.slots`` writes it: slot A holds ``image``, slot B is
    empty."""
    with tempfile.TemporaryDirectory(prefix="attest-ptr-") as d:
        store = SlotStore(d)
        store.save(BootPointer(active="a", slots={"a": slot_image(image), "b": None}))
        return store.pointer_path.read_bytes()


# --- the harness's TLS CA ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


def tls_files(work: Path) -> TlsFiles:
    """The harness's private CA (made once, in ``WORK/tls``): a server certificate for the node
    (IP 127.0.0.1: the port forward) and a client certificate for the harness."""
    d = work / "tls"
    files = TlsFiles(
        d / "ca.pem", d / "node.pem", d / "node.key", d / "client.pem", d / "client.key"
    )
    if all(
        p.exists()
        for p in (files.ca, files.node_cert, files.node_key, files.client_cert, files.client_key)
    ):
        return files
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    later = now + dt.timedelta(days=3650)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("attest vm-harness TLS CA (TEST)"))
        .issuer_name(name("attest vm-harness TLS CA (TEST)"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName], cert: Path, key: Path
    ) -> None:
        k = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert.write_bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        pem_key(k, key)

    leaf(
        "attest-node",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("attest-node")],
        files.node_cert,
        files.node_key,
    )
    leaf(
        "vm-harness operator",
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
        files.client_cert,
        files.client_key,
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


def state_files(image: NodeImage, work: Path) -> dict[str, tuple[bytes, int]]:
    """The state disk's initial contents for a node whose slot A holds ``image``."""
    tls = tls_files(work)
    return {
        "attest/slots/boot.json": (initial_pointer(image), 0o644),
        "attest/trust/root.json": ((TEST_TRUST / "root.json").read_bytes(), 0o644),
        "attest/spool/.keep": (b"", 0o644),
        "attest/tls/node.pem": (tls.node_cert.read_bytes(), 0o644),
        "attest/tls/node.key": (tls.node_key.read_bytes(), 0o600),
        "attest/tls/client-ca.pem": (tls.ca.read_bytes(), 0o644),
    }


# --- registry snapshots -----------------------------------------------------------------------


def release_of(image: NodeImage, *, blessed_at: dt.datetime) -> Release:
    pcrs = PcrValues.from_json(image.expected_pcrs)
    return Release(
        version=image.version,
        sequence=release_sequence(image.version),
        artifact_sha256=bytes.fromhex(image.root_sha256),
        artifact_size=image.root_size,
        verity=verity_params(image),
        blessed_at=blessed_at,
        source_commit=bytes(20),
        expected_pcrs={PLATFORM_ID: {"uki": pcrs}},
    )


def _private_key(name: str) -> PrivateKey:
    """One of the TEST keys (Ed25519 or ECDSA: what the manifests sign with)."""
    key = serialization.load_pem_private_key((TEST_TRUST / "keys" / name).read_bytes(), None)
    if not isinstance(key, PrivateKey):
        raise TypeError(f"{name}: not an Ed25519 or ECDSA private key")
    return key


def _with_platform(snap: RegistrySnapshot, path: Path) -> RegistrySnapshot:
    """``snap`` with the platform reference at ``path`` (the shape ``attest manifest
    platform-set --ref`` reads), signed by the TEST platform key."""
    doc = {"_type": "platform", "spec_version": "1", **json.loads(path.read_text())}
    ref = parse_platform_signed(doc, field=str(path))
    key = _private_key(PLATFORM_KEY)
    snap = set_platform(snap, ref)
    sig = sign(key, canonicalize(ref.to_json()))
    return with_platform_signature(snap, ref.platform_id, Key.of_private(key).keyid, sig)


def signed_registry(
    images: Iterable[NodeImage],
    *,
    sequence: int,
    rollbacks: Iterable[tuple[str, str]] = (),
    platform: Path | None = None,
) -> bytes:
    """A registry snapshot blessing ``images`` (their build's digests and predicted PCRs),
    with rollback authorisations FROM -> TO and, with ``platform``, that platform reference
    (signed by the TEST platform key), signed by the TEST releases keys (threshold 2)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rels = {i.version: release_of(i, blessed_at=now - dt.timedelta(hours=1)) for i in images}
    snap = checked(
        RegistrySnapshot(
            sequence=sequence,
            expires=now + dt.timedelta(days=30),
            releases=rels,
            rollbacks=tuple(
                RollbackAuthorisation(a, b, "vm-harness scenario 6") for a, b in rollbacks
            ),
        )
    )
    if platform is not None:
        snap = _with_platform(snap, platform)
    env = UnverifiedEnvelope(snap.to_json(), ())
    for name in RELEASE_KEYS:
        key = _private_key(name)
        env = env.with_signature(Key.of_private(key).keyid, sign(key, env.signed_bytes))
    return env.to_bytes()


def verifier_registry(images: Iterable[NodeImage], *, sequence: int = 1) -> VerifiedRegistry:
    """The registry an orchestrator appraises the harness's nodes with: ``images`` blessed and
    the harness platform's reference, verified under the TEST root as ``attest verify --root
    --snapshot`` verifies it."""
    now = dt.datetime.now(dt.UTC)
    data = signed_registry(images, sequence=sequence, platform=PLATFORM_REF)
    root = verify_root_self_signed((TEST_TRUST / "root.json").read_bytes(), now=now)
    return verify_snapshot(root.root, data, now=now)
