"""Signed envelopes, public keys, key ids and signatures.

An envelope is ``{"signatures": [{"keyid": HEX, "sig": HEX}, ...], "signed": {...}}``; the bytes a
key signs are ``canonicalize(envelope["signed"])`` (RFC 8785), and the envelope file itself must
be canonical too, so that "same document" means "same bytes".

Keys (``{"keytype": ..., "public": HEX}``):

- ``ed25519``: ``public`` is the 32-byte raw public key; signatures are the 64-byte RFC 8032
  signature.
- ``ecdsa-p256-sha256``: ``public`` is the 65-byte uncompressed SEC1 point (``04 || X || Y``);
  signatures are ECDSA over SHA-256, DER-encoded (``SEQUENCE { r, s }``, as produced by OpenSSL,
  PKCS#11 tokens and ``cryptography``), at most 72 bytes.

A key id is ``sha256(canonicalize(key_document))`` in lower-case hex and is *recomputed* by the
parser: a root whose key ids do not match their keys is refused, so one key can never be listed
twice under two ids to count twice toward a threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attest.errors import ManifestFormatError
from attest.manifest.canonical import canonicalize

KEYTYPE_ED25519 = "ed25519"
KEYTYPE_P256 = "ecdsa-p256-sha256"
KEYTYPES = (KEYTYPE_ED25519, KEYTYPE_P256)
MAX_SIGNATURES = 64
_MAX_SIG_BYTES = {KEYTYPE_ED25519: 64, KEYTYPE_P256: 72}
_PUBLIC_BYTES = {KEYTYPE_ED25519: 32, KEYTYPE_P256: 65}

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def parse_hex(value: object, *, field: str, size: int | None = None, max_size: int = 4096) -> bytes:
    """Lower-case hex → bytes; refuse anything else (upper case would break byte identity)."""
    if not isinstance(value, str):
        raise ManifestFormatError(f"{field}: expected a hex string")
    if len(value) > 2 * max_size or len(value) % 2 or value != value.lower():
        raise ManifestFormatError(f"{field}: not lower-case hex of even length")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ManifestFormatError(f"{field}: not hex") from None
    if size is not None and len(raw) != size:
        raise ManifestFormatError(f"{field}: {len(raw)} bytes, expected {size}")
    return raw


@dataclass(frozen=True, slots=True)
class Key:
    """A public key as listed in a trust root."""

    keytype: str
    public: bytes

    @property
    def keyid(self) -> str:
        return hashlib.sha256(canonicalize(self.to_json())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"keytype": self.keytype, "public": self.public.hex()}

    @classmethod
    def from_json(cls, doc: object, *, field: str = "key") -> Key:
        if not isinstance(doc, dict) or set(doc) != {"keytype", "public"}:
            raise ManifestFormatError(f"{field}: expected exactly keytype and public")
        keytype = doc["keytype"]
        if keytype not in KEYTYPES:
            raise ManifestFormatError(f"{field}: unsupported keytype {str(keytype)[:40]!r}")
        public = parse_hex(doc["public"], field=f"{field}.public", size=_PUBLIC_BYTES[keytype])
        key = cls(keytype, public)
        try:
            key._load()
        except ValueError:
            raise ManifestFormatError(f"{field}: not a valid {keytype} public key") from None
        return key

    def _load(self) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
        if self.keytype == KEYTYPE_ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(self.public)
        if self.public[:1] != b"\x04":
            raise ValueError("not an uncompressed point")
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's signature over ``message``."""
        if len(signature) > _MAX_SIG_BYTES[self.keytype]:
            return False
        try:
            public = self._load()
            if isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(signature, message)
            else:
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def of_private(cls, private: PrivateKey) -> Key:
        from cryptography.hazmat.primitives import serialization

        if isinstance(private, ed25519.Ed25519PrivateKey):
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            return cls(KEYTYPE_ED25519, raw)
        if isinstance(private.curve, ec.SECP256R1):
            point = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return cls(KEYTYPE_P256, point)
        raise ValueError(f"unsupported curve {private.curve.name}")


def sign(private: PrivateKey, message: bytes) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(message)
    return private.sign(message, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes

    def to_json(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "sig": self.sig.hex()}


@dataclass(frozen=True, slots=True)
class UnverifiedEnvelope:
    """A parsed envelope whose signatures have not been checked yet."""

    signed: dict[str, Any]
    signatures: tuple[Signature, ...]

    @property
    def signed_bytes(self) -> bytes:
        return canonicalize(self.signed)

    def to_json(self) -> dict[str, Any]:
        return {"signed": self.signed, "signatures": [s.to_json() for s in self.signatures]}

    def to_bytes(self) -> bytes:
        return canonicalize(self.to_json())

    def with_signature(self, keyid: str, sig: bytes) -> UnverifiedEnvelope:
        """A copy holding ``sig`` for ``keyid`` (replacing an earlier one), sorted by key id."""
        others = [s for s in self.signatures if s.keyid != keyid]
        sigs = sorted([*others, Signature(keyid, sig)], key=lambda s: s.keyid)
        return UnverifiedEnvelope(self.signed, tuple(sigs))


def parse_envelope(doc: object, *, field: str = "document") -> UnverifiedEnvelope:
    if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"}:
        raise ManifestFormatError(f"{field}: expected an object with exactly signed and signatures")
    signed, sigs = doc["signed"], doc["signatures"]
    if not isinstance(signed, dict):
        raise ManifestFormatError(f"{field}.signed: expected an object")
    if not isinstance(sigs, list):
        raise ManifestFormatError(f"{field}.signatures: expected an array")
    if len(sigs) > MAX_SIGNATURES:
        raise ManifestFormatError(f"{field}: {len(sigs)} signatures, limit {MAX_SIGNATURES}")
    out = []
    for i, s in enumerate(sigs):
        where = f"{field}.signatures[{i}]"
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise ManifestFormatError(f"{where}: expected exactly keyid and sig")
        keyid = parse_hex(s["keyid"], field=f"{where}.keyid", size=32).hex()
        out.append(Signature(keyid, parse_hex(s["sig"], field=f"{where}.sig", max_size=128)))
    return UnverifiedEnvelope(signed, tuple(out))


def count_valid(
    envelope: UnverifiedEnvelope, *, keys: Mapping[str, Key], authorised: Iterable[str]
) -> set[str]:
    """The set of *distinct* authorised key ids holding a valid signature over the envelope.

    Signatures by unknown keys, by keys not authorised for the role, repeated signatures by one
    key, and invalid signatures contribute nothing (TUF specification §5.3–5.5: "threshold of
    unique keys").
    """
    allowed = set(authorised)
    message = envelope.signed_bytes
    good: set[str] = set()
    for s in envelope.signatures:
        if s.keyid in good or s.keyid not in allowed:
            continue
        key = keys.get(s.keyid)
        if key is not None and key.verifies(s.sig, message):
            good.add(s.keyid)
    return good
