"""Enrollment: trust in the EK (its certificate chain) and in the AK (credential activation).

Pure: bytes, ``Public`` structures and certificates in; verified values out or an error. The
verifier side of enrollment is

1. ``verify_ek_certificate(der, roots=..., intermediates=..., now=...)`` -- the EK certificate
   read from the TPM's NV chains to a configured TPM-vendor root (TCG EK Credential Profile);
2. ``ek_matches_certificate(ek, verified.certificate)`` -- the EK the TPM presents is the key
   in that certificate;
3. ``start_enrollment(ek, ak, rng=...)`` -- ``verify_ak_attributes(ak)``, then
   TPM2_MakeCredential computed here (TPM 2.0 Part 1 §24) for the AK's Name under the EK;
4. the node runs TPM2_ActivateCredential and returns the secret;
   ``finish_enrollment(expected, returned)`` compares it in constant time.

A TPM releases the secret only if the AK with exactly that Name is loaded in the same TPM as
the EK's private key, so a matching secret proves the AK lives beside a genuine EK.

What the verifier remembers afterwards is an ``Enrollment`` record (persisted by
``attest.verifier.enrollments``; ``attest.appraisal`` appraises evidence against it).

Section numbers refer to TPM 2.0 Library Part 1 (Architecture) and Part 3 (Commands),
revision 1.59, unless said otherwise.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from attest.ekcert.der import Tolerated
from attest.ekcert.parse import ParsedCertificate, parse_certificate
from attest.ekcert.verify import verify_ek_chain
from attest.errors import (
    CertificateError,
    CertificateFormatError,
    CredentialError,
    EvidenceFormatError,
    KeyPolicyError,
    QuoteFormatError,
)
from attest.model import HashAlg
from attest.tpmstruct import Alg, EccCurve, ObjectAttr, Public, ecc_coordinate_size, parse_public

logger = logging.getLogger(__name__)

Rng = Callable[[int], bytes]

# --- EK certificates (TCG EK Credential Profile 2.x, RFC 5280; attest.ekcert) -------------------


@dataclass(frozen=True, slots=True)
class VerifiedEk:
    """An EK certificate whose chain to a configured root verified at ``verified_at``.

    ``chain`` runs from the EK certificate to the root. ``tpm_manufacturer``/``tpm_model``/
    ``tpm_version`` come from the subjectAltName directoryName when present (informational:
    they are as trustworthy as the CA that signed them). ``deviations`` names every departure
    from DER that was tolerated in reading the chain (certificate, deviation)."""

    certificate: ParsedCertificate
    chain: tuple[ParsedCertificate, ...]
    verified_at: datetime
    tpm_manufacturer: str | None = None
    tpm_model: str | None = None
    tpm_version: str | None = None
    deviations: tuple[tuple[str, Tolerated], ...] = ()


def _describe(cert: ParsedCertificate | x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "<empty subject>"
    return f"{subject!r} (serial {cert.serial_number:#x}, issuer {cert.issuer.rfc4514_string()!r})"


def verify_ek_certificate(
    cert_der: bytes,
    *,
    roots: Sequence[ParsedCertificate | x509.Certificate],
    intermediates: Sequence[ParsedCertificate | x509.Certificate] = (),
    now: datetime,
) -> VerifiedEk:
    """Verify that ``cert_der`` (DER, BER as vendors ship it, or raw NV contents with padding)
    is an EK certificate chaining to one of ``roots`` at ``now``.

    ``intermediates`` are untrusted helpers for path building (e.g. a vendor's issuing CAs).
    Raises ``CertificateError`` naming the certificate and the check that failed.
    """
    if not roots:
        raise CertificateError("no trusted EK roots are configured", reason="no-roots")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        cert = parse_certificate(cert_der)
    except CertificateFormatError as exc:
        raise CertificateError(
            f"EK certificate is not a DER X.509 certificate (nor one a vendor ships): {exc}",
            reason="format",
        ) from None
    verified = verify_ek_chain(cert, anchors=roots, intermediates=intermediates, now=now)
    ident = verified.identity
    return VerifiedEk(
        cert,
        verified.chain,
        verified.verified_at,
        ident.manufacturer,
        ident.model,
        ident.version,
        verified.deviations,
    )


def ek_matches_certificate(ek: Public, cert: ParsedCertificate | x509.Certificate) -> None:
    """Raise ``CertificateError`` unless the EK public area holds the certificate's key."""
    cert_key = cert.public_key()
    ek_key = ek.key
    if isinstance(ek_key, rsa.RSAPublicKey) and isinstance(cert_key, rsa.RSAPublicKey):
        if ek_key.public_numbers() == cert_key.public_numbers():
            return
    elif isinstance(ek_key, ec.EllipticCurvePublicKey) and isinstance(
        cert_key, ec.EllipticCurvePublicKey
    ):
        a, b = ek_key.public_numbers(), cert_key.public_numbers()
        if a.curve.name == b.curve.name and (a.x, a.y) == (b.x, b.y):
            return
    raise CertificateError(
        f"the TPM's EK ({ek.type.name}) is not the key certified by {_describe(cert)}"
    )


# --- AK attributes (Part 1 §25 Attestation Keys, Part 2 §8.3 TPMA_OBJECT) ---------------------

_AK_REQUIRED = (
    (ObjectAttr.FIXED_TPM, "fixedTPM"),
    (ObjectAttr.FIXED_PARENT, "fixedParent"),
    (ObjectAttr.SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (ObjectAttr.RESTRICTED, "restricted"),
    (ObjectAttr.SIGN_ENCRYPT, "sign"),
)
_AK_FORBIDDEN = ((ObjectAttr.DECRYPT, "decrypt"),)
_ALLOWED_HASHES = (HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
_AK_SCHEMES = {Alg.RSA: (Alg.RSASSA, Alg.RSAPSS), Alg.ECC: (Alg.ECDSA,)}
_AK_CURVES = (EccCurve.NIST_P256, EccCurve.NIST_P384, EccCurve.NIST_P521)
MIN_RSA_BITS = 2048


def verify_ak_attributes(ak: Public) -> None:
    """Refuse an AK that is not a TPM-resident, non-duplicable, restricted signing key.

    Raises ``KeyPolicyError`` naming every missing or forbidden attribute and every refused
    parameter. fixedTPM/fixedParent/sensitiveDataOrigin make the key unable to leave the TPM
    and generated inside it; restricted+sign make it sign only TPM-generated structures
    (Part 1 §25.3), so a quote it signs cannot be forged from outside the TPM.
    """
    problems: list[str] = []
    for flag, name in _AK_REQUIRED:
        if not ak.attributes & flag:
            problems.append(f"{name} is not set")
    for flag, name in _AK_FORBIDDEN:
        if ak.attributes & flag:
            problems.append(f"{name} is set")
    if ak.name_alg not in _ALLOWED_HASHES:
        problems.append(f"nameAlg {ak.name_alg.bank_name} is not sha256/sha384/sha512")
    if ak.scheme == Alg.NULL:
        problems.append("scheme is NULL (a restricted signing key must fix its scheme)")
    elif ak.scheme not in _AK_SCHEMES.get(ak.type, ()):
        problems.append(f"scheme 0x{ak.scheme:04x} is not allowed for an {ak.type.name} AK")
    elif ak.scheme_hash not in _ALLOWED_HASHES:
        got = ak.scheme_hash.bank_name if ak.scheme_hash else "none"
        problems.append(f"scheme hash {got} is not sha256/sha384/sha512")
    if ak.type == Alg.RSA and ak.key_bits < MIN_RSA_BITS:
        problems.append(f"RSA key of {ak.key_bits} bits is shorter than {MIN_RSA_BITS}")
    if ak.type == Alg.ECC and ak.curve not in _AK_CURVES:
        problems.append(f"ECC curve 0x{ak.curve:04x} is not P-256, P-384 or P-521")
    if problems:
        raise KeyPolicyError("AK refused: " + "; ".join(problems))


# --- KDFs (Part 1 §11.4.9.2 KDFa, §11.4.10.3 KDFe) ---------------------------------------------


def _label(label: bytes) -> bytes:
    # The label is a NUL-terminated string; the terminator is part of the KDF input.
    return label if label.endswith(b"\0") else label + b"\0"


def kdfa(
    hash_alg: HashAlg, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa: SP 800-108 counter-mode KDF with HMAC (Part 1 §11.4.9.2).

    K(i) = HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32), i = 1, 2, ...
    """
    if bits <= 0 or bits % 8:
        raise ValueError(f"KDFa output of {bits} bits is not a positive multiple of 8")
    fixed = _label(label) + context_u + context_v + bits.to_bytes(4, "big")
    out = bytearray()
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.digest(key, counter.to_bytes(4, "big") + fixed, _alg_name(hash_alg))
        counter += 1
    return bytes(out[: bits // 8])


def kdfe(
    hash_alg: HashAlg, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int
) -> bytes:
    """KDFe: SP 800-56A concatenation KDF (Part 1 §11.4.10.3).

    K(i) = H([i]32 || Z || use || 0x00 || partyUInfo || partyVInfo), i = 1, 2, ...
    """
    if bits <= 0 or bits % 8:
        raise ValueError(f"KDFe output of {bits} bits is not a positive multiple of 8")
    other = _label(use) + party_u + party_v
    out = bytearray()
    counter = 1
    while len(out) * 8 < bits:
        out += hash_alg.digest(counter.to_bytes(4, "big") + z + other)
        counter += 1
    return bytes(out[: bits // 8])


def _alg_name(hash_alg: HashAlg) -> str:
    if hash_alg is HashAlg.SM3_256:
        raise KeyPolicyError("SM3 is not supported for credential protection")
    return hash_alg.bank_name


_PYCA_HASH: dict[HashAlg, type[hashes.HashAlgorithm]] = {
    HashAlg.SHA1: hashes.SHA1,
    HashAlg.SHA256: hashes.SHA256,
    HashAlg.SHA384: hashes.SHA384,
    HashAlg.SHA512: hashes.SHA512,
}
_EC_CURVE: dict[int, ec.EllipticCurve] = {
    EccCurve.NIST_P256: ec.SECP256R1(),
    EccCurve.NIST_P384: ec.SECP384R1(),
    EccCurve.NIST_P521: ec.SECP521R1(),
}


# --- MakeCredential (Part 1 §24, Part 3 §12.6) -------------------------------------------------

IDENTITY = b"IDENTITY\0"  # Part 1 §24.4; Annex B.10.4 (OAEP label), C.6.4 (KDFe use)
STORAGE = b"STORAGE\0"  # Part 1 §24.4 (symmetric key)
INTEGRITY = b"INTEGRITY\0"  # Part 1 §24.5 (HMAC key)


def _tpm2b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _check_ek(ek: Public) -> tuple[HashAlg, int]:
    """The EK must be a restricted decryption (storage) key with an AES-CFB symmetric
    definition (Part 1 §24.1); return its nameAlg and symmetric key bits."""
    missing = [
        name
        for flag, name in ((ObjectAttr.RESTRICTED, "restricted"), (ObjectAttr.DECRYPT, "decrypt"))
        if not ek.attributes & flag
    ]
    if missing:
        raise KeyPolicyError(f"EK refused: {', '.join(missing)} not set (not a storage key)")
    if ek.attributes & ObjectAttr.SIGN_ENCRYPT:
        raise KeyPolicyError("EK refused: sign is set (a storage key cannot sign)")
    if ek.name_alg not in _ALLOWED_HASHES:
        raise KeyPolicyError(f"EK refused: nameAlg {ek.name_alg.bank_name} is not allowed")
    sym = ek.symmetric
    if sym.alg != Alg.AES or sym.mode != Alg.CFB or sym.key_bits not in (128, 192, 256):
        raise KeyPolicyError(
            f"EK refused: symmetric algorithm 0x{sym.alg:04x}/{sym.key_bits}/mode "
            f"0x{sym.mode:04x} is not AES-CFB"
        )
    if ek.type == Alg.ECC and ek.curve not in _EC_CURVE:
        raise KeyPolicyError(f"EK refused: ECC curve 0x{ek.curve:04x} is not supported")
    return ek.name_alg, sym.key_bits


def _check_name(name: bytes) -> None:
    """A Name of an object: nameAlg || digest (Part 1 §16)."""
    if len(name) < 2:
        raise QuoteFormatError(f"AK name of {len(name)} bytes is too short")
    try:
        alg = HashAlg(int.from_bytes(name[:2], "big"))
    except ValueError:
        raise QuoteFormatError(f"AK name algorithm 0x{name[:2].hex()} is unknown") from None
    if len(name) != 2 + alg.digest_size:
        raise QuoteFormatError(f"AK name of {len(name)} bytes does not fit {alg.bank_name}")


def _ephemeral_key(curve: ec.EllipticCurve, order: int, rng: Rng) -> ec.EllipticCurvePrivateKey:
    # FIPS 186-5 A.2.1 (extra random bits): d = (c mod (n-1)) + 1 with 64 extra bits.
    c = int.from_bytes(rng((order.bit_length() + 64 + 7) // 8), "big")
    return ec.derive_private_key(c % (order - 1) + 1, curve)


_CURVE_ORDER = {
    EccCurve.NIST_P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    EccCurve.NIST_P384: int(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
        "581a0db248b0a77aecec196accc52973",
        16,
    ),
    EccCurve.NIST_P521: int(
        "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
        "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
        16,
    ),
}


def _seed(ek: Public, hash_alg: HashAlg, rng: Rng) -> tuple[bytes, bytes]:
    """Generate the seed and protect it to the EK (Part 1 §24.3): (seed, encrypted_secret)."""
    size = hash_alg.digest_size
    key = ek.key
    if isinstance(key, rsa.RSAPublicKey):
        # Annex B.10.3/B.10.4: RSAES-OAEP with the EK's nameAlg for hash and MGF1, label
        # "IDENTITY\0". (OAEP's own randomness comes from the OS, not from ``rng``.)
        seed = rng(size)
        h = _PYCA_HASH[hash_alg]()
        return seed, key.encrypt(seed, padding.OAEP(padding.MGF1(h), h, IDENTITY))
    # Annex C.6.4: one-pass ECDH with an ephemeral key on the EK's curve;
    # seed = KDFe(nameAlg, Z, "IDENTITY", ephemeral.x, ek.x, digest bits).
    curve = _EC_CURVE[ek.curve]
    coord = ecc_coordinate_size(ek.curve)
    eph = _ephemeral_key(curve, _CURVE_ORDER[EccCurve(ek.curve)], rng)
    z = eph.exchange(ec.ECDH(), key)
    pub = eph.public_key().public_numbers()
    eph_x, eph_y = pub.x.to_bytes(coord, "big"), pub.y.to_bytes(coord, "big")
    seed = kdfe(hash_alg, z, IDENTITY, eph_x, ek.x, size * 8)
    return seed, _tpm2b(eph_x) + _tpm2b(eph_y)  # TPMS_ECC_POINT


def make_credential(
    ek: Public, ak_name: bytes, secret: bytes, *, rng: Rng = os.urandom
) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software (Part 3 §12.6, Part 1 §24).

    Returns ``(id_object, encrypted_secret)``: the contents of TPM2B_ID_OBJECT
    (TPM2B integrityHMAC || encIdentity) and of TPM2B_ENCRYPTED_SECRET. ``secret`` is the
    credential the TPM will release to the holder of ``ak_name`` (at most the EK nameAlg's
    digest size, as Part 3 §12.6.1 requires).
    """
    hash_alg, sym_bits = _check_ek(ek)
    _check_name(ak_name)
    if not 0 < len(secret) <= hash_alg.digest_size:
        raise ValueError(
            f"credential of {len(secret)} bytes; 1..{hash_alg.digest_size} allowed for an EK "
            f"with nameAlg {hash_alg.bank_name}"
        )
    seed, encrypted_secret = _seed(ek, hash_alg, rng)
    # §24.4: symKey = KDFa(nameAlg, seed, "STORAGE", Name, NULL, symmetric key bits);
    # encIdentity = CFB(symKey, IV = 0, TPM2B_DIGEST(credential)).
    sym_key = kdfa(hash_alg, seed, STORAGE, ak_name, b"", sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()
    # §24.5: HMACkey = KDFa(nameAlg, seed, "INTEGRITY", NULL, NULL, digest bits);
    # outerHMAC = HMAC(HMACkey, encIdentity || Name).
    hmac_key = kdfa(hash_alg, seed, INTEGRITY, b"", b"", hash_alg.digest_size * 8)
    outer_hmac = hmac.digest(hmac_key, enc_identity + ak_name, _alg_name(hash_alg))
    return _tpm2b(outer_hmac) + enc_identity, encrypted_secret


# --- the enrollment exchange ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """What the verifier sends to the node: the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET
    contents for TPM2_ActivateCredential."""

    id_object: bytes = field(repr=False)
    encrypted_secret: bytes = field(repr=False)


def start_enrollment(ek: Public, ak: Public, *, rng: Rng = os.urandom) -> tuple[Challenge, bytes]:
    """Check the AK's attributes and make a credential for it under the EK.

    Returns the challenge for the node and the secret it must return. The EK must already be
    trusted (``verify_ek_certificate`` + ``ek_matches_certificate``)."""
    verify_ak_attributes(ak)
    secret = rng(_check_ek(ek)[0].digest_size)
    id_object, encrypted_secret = make_credential(ek, ak.name, secret, rng=rng)
    logger.info(
        "credential challenge issued", extra={"ak_name_sha256": hashlib.sha256(ak.name).hexdigest()}
    )
    return Challenge(id_object, encrypted_secret), secret


def finish_enrollment(expected_secret: bytes, returned_secret: bytes) -> None:
    """Raise ``CredentialError`` unless the node returned the credential's secret."""
    if not expected_secret:
        raise RuntimeError("finish_enrollment called without an expected secret")
    if not hmac.compare_digest(expected_secret, returned_secret):
        logger.info("credential activation failed: wrong secret returned")
        raise CredentialError(
            "the secret returned does not match the credential: the AK is not resident in "
            "the TPM that holds the EK"
        )
    logger.info("credential activation verified")


# --- enrollment (the value the verifier remembers; persisted by attest.verifier.enrollments) ---


class EnrollmentStrength(enum.StrEnum):
    """What an enrollment proved, strongest first."""

    EK_CHAIN = "ek-chain+activated"  # the EK chains to a configured root; the AK is in its TPM
    ACTIVATED = "activated"  # credential activation proved the AK shares a TPM with the EK
    TOFU = "tofu"  # trust on first use: the AK the node presented first


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What a verifier remembers about a node after enrolling it."""

    node_id: str
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes
    ek_sha256: bytes | None  # sha256 of the EK TPMT_PUBLIC, when the node has an EK
    ek_certificate: str | None  # the EK certificate's subject/issuer, when verified
    activated: bool
    runtime_pcr: int
    enrolled_at: str

    @property
    def ak(self) -> Public:
        return parse_public(self.ak_public)

    @property
    def strength(self) -> EnrollmentStrength:
        """How far the verifier's trust in this AK reaches (shown with every verdict)."""
        if self.activated and self.ek_certificate is not None:
            return EnrollmentStrength.EK_CHAIN
        if self.activated:
            return EnrollmentStrength.ACTIVATED
        return EnrollmentStrength.TOFU

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "ak_public": self.ak_public.hex(),
            "ak_name": self.ak_name.hex(),
            "ek_sha256": None if self.ek_sha256 is None else self.ek_sha256.hex(),
            "ek_certificate": self.ek_certificate,
            "activated": self.activated,
            "runtime_pcr": self.runtime_pcr,
            "enrolled_at": self.enrolled_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Enrollment:
        try:
            return cls(
                node_id=str(doc["node_id"]),
                ak_public=bytes.fromhex(doc["ak_public"]),
                ak_name=bytes.fromhex(doc["ak_name"]),
                ek_sha256=None if doc["ek_sha256"] is None else bytes.fromhex(doc["ek_sha256"]),
                ek_certificate=doc["ek_certificate"],
                activated=bool(doc["activated"]),
                runtime_pcr=int(doc["runtime_pcr"]),
                enrolled_at=str(doc["enrolled_at"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceFormatError(f"enrollment record: {exc}") from None
