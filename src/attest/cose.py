"""COSE_Sign1 with ECDSA (RFC 9052 §4.2, RFC 9053 §2.1): the one implementation attest's signed
CBOR shares — the CWT EAR (``attest.appraisal.ear``) and the signed CoRIM
(``attest.manifest.corim``). Pure: bytes and keys in, bytes or typed values out.

Signatures are the raw ``r || s`` of RFC 9053 §2.1, normalised to low S by the signer (an
ECDSA signature has a twin ``(r, n - s)``; relying parties that deduplicate by bytes need one
spelling). Verification refuses a high S unless told otherwise (``low_s=False``, for other
signers' tokens). Decoding is strict: one CBOR item filling its bytes, bounded depth, no
duplicate map keys; a caller names its own format error for what does not parse.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from attest.errors import AttestError, SignatureError

COSE_SIGN1_TAG = 18  # RFC 9052 §4.2
HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID = 1, 2, 3, 4  # RFC 9052 §3.1
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class EcdsaAlg:
    """An ECDSA algorithm of RFC 9053 §2.1: its name, COSE id, curve, hash and the byte size
    of ``r`` and ``s``."""

    name: str
    cose_id: int
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    size: int
    order: int  # the curve's group order n (low S: s <= n / 2)
    # The signature algorithm object, built once (as dear as the rest of a sign's overhead).
    ecdsa: ec.ECDSA = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ecdsa", ec.ECDSA(self.hash()))


ES256 = EcdsaAlg(
    "ES256",
    -7,
    ec.SECP256R1,
    hashes.SHA256,
    32,
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
)
ES384 = EcdsaAlg(
    "ES384",
    -35,
    ec.SECP384R1,
    hashes.SHA384,
    48,
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
)
ALGS: dict[int, EcdsaAlg] = {a.cose_id: a for a in (ES256, ES384)}


def alg_for_key(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> EcdsaAlg:
    """ES256 for a P-256 key, ES384 for a P-384 key (RFC 9053 §2.1 pairs them); ValueError
    for another curve."""
    for alg in ALGS.values():
        if isinstance(key.curve, alg.curve):
            return alg
    raise ValueError(f"ES256 needs a P-256 key and ES384 a P-384 key, not {key.curve.name}")


def ecdsa_sign(key: ec.EllipticCurvePrivateKey, data: bytes, alg: EcdsaAlg) -> bytes:
    """Raw ``r || s`` with ``s`` normalised to low S."""
    if not isinstance(key.curve, alg.curve):
        raise ValueError(f"{alg.name} needs a {alg.curve.name} key, not {key.curve.name}")
    r, s = decode_dss_signature(key.sign(data, alg.ecdsa))
    if s > alg.order // 2:
        s = alg.order - s
    return r.to_bytes(alg.size, "big") + s.to_bytes(alg.size, "big")


def ecdsa_verify(
    public_key: ec.EllipticCurvePublicKey,
    sig: bytes,
    data: bytes,
    alg: EcdsaAlg,
    *,
    low_s: bool = True,
    what: str = "COSE",
) -> None:
    """Verify a raw ``r || s`` signature, or raise ``SignatureError``."""
    if not isinstance(public_key.curve, alg.curve):
        raise SignatureError(f"the {what} key is not a {alg.curve.name} key ({alg.name})")
    if len(sig) != 2 * alg.size:
        raise SignatureError(f"{alg.name} signature is {len(sig)} bytes, not {2 * alg.size}")
    r, s = int.from_bytes(sig[: alg.size], "big"), int.from_bytes(sig[alg.size :], "big")
    if low_s and s > alg.order // 2:
        raise SignatureError(f"{alg.name} signature has a high S (not the signer's canonical form)")
    try:
        public_key.verify(encode_dss_signature(r, s), data, alg.ecdsa)
    except InvalidSignature:
        raise SignatureError(f"the {what} signature does not verify with the given key") from None


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4: what a COSE_Sign1 signs (``Signature1``, no external AAD)."""
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


def encode_protected(header: Mapping[int, Any]) -> bytes:
    """A protected header map in deterministic CBOR (RFC 8949 §4.2.1)."""
    return bytes(cbor2.dumps(dict(header), canonical=True))


def sign1(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes,
    unprotected: Mapping[int, Any] | None = None,
) -> bytes:
    """A tagged COSE_Sign1 (tag 18) over ``payload`` with the encoded ``protected`` header,
    which must name the key's algorithm (label 1)."""
    alg = alg_for_key(key)
    header = cbor2.loads(protected) if protected else {}
    if not isinstance(header, dict) or header.get(HDR_ALG) != alg.cose_id:
        raise ValueError(f"the protected header must name {alg.name} ({alg.cose_id})")
    sig = ecdsa_sign(key, sig_structure(protected, payload), alg)
    item = [protected, dict(unprotected or {}), payload, sig]
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, item)))


def decode_cbor(
    data: bytes, *, error: type[AttestError], what: str, max_depth: int = MAX_DEPTH
) -> Any:
    """One CBOR item filling ``data`` exactly: no trailing bytes, no duplicate map keys, at
    most ``max_depth`` levels; anything else raises ``error``."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp, max_depth=max_depth, allow_duplicate_keys=False).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise error(f"{what} is not well-formed CBOR") from None
    if fp.tell() != len(data):
        raise error(f"{what} has bytes after its CBOR item")
    return item


@dataclass(frozen=True, slots=True)
class UnverifiedSign1:
    """The four members of a COSE_Sign1 that parsed; nothing checked yet."""

    protected_raw: bytes
    protected: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    def header(self, label: int) -> Any:
        """A header parameter, protected first (RFC 9052 §3: a label appears in one only)."""
        return self.protected.get(label, self.unprotected.get(label))


def parse_sign1(item: Any, *, error: type[AttestError], what: str) -> UnverifiedSign1:
    """A decoded COSE_Sign1 (tag 18, or the untagged array) -> its members, or ``error``. The
    payload must be attached."""
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise error(f"{what} is CBOR tag {item.tag}, not COSE_Sign1 (18)")
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise error(f"{what} is not a COSE_Sign1 (an array of 4)")
    protected, unprotected, payload, sig = item
    if not all(isinstance(x, bytes) for x in (protected, payload, sig)):
        raise error(f"{what}: COSE_Sign1 fields are not byte strings (detached payload?)")
    if not isinstance(unprotected, Mapping):
        raise error(f"{what}: COSE_Sign1 unprotected header is not a map")
    header = (
        decode_cbor(protected, error=error, what=f"{what} protected header") if protected else {}
    )
    if not isinstance(header, Mapping):
        raise error(f"{what}: COSE_Sign1 protected header is not a map")
    return UnverifiedSign1(protected, header, unprotected, payload, sig)


def verify_sign1(
    msg: UnverifiedSign1,
    public_key: ec.EllipticCurvePublicKey,
    *,
    allowed: tuple[EcdsaAlg, ...],
    low_s: bool = True,
    what: str = "COSE",
) -> EcdsaAlg:
    """Check a COSE_Sign1's signature and return its algorithm, or raise ``SignatureError``.

    The algorithm is pinned to ``allowed`` and must be protected (RFC 9052 §3.1: ``alg`` in the
    unprotected header could be changed by anyone); a ``crit`` parameter is refused, this
    verifier understanding none (RFC 9052 §3.1)."""
    cose_id = msg.protected.get(HDR_ALG)
    alg = ALGS.get(cose_id) if type(cose_id) is int else None
    if alg is None or alg not in allowed or HDR_ALG in msg.unprotected:
        shown = msg.header(HDR_ALG)
        names = " or ".join(f"{a.name} ({a.cose_id})" for a in allowed)
        raise SignatureError(f"{what} alg {str(shown)[:16]!r} is not {names}")
    if HDR_CRIT in msg.protected or HDR_CRIT in msg.unprotected:
        raise SignatureError(f"{what} header has critical parameters this verifier does not know")
    ecdsa_verify(
        public_key,
        msg.signature,
        sig_structure(msg.protected_raw, msg.payload),
        alg,
        low_s=low_s,
        what=what,
    )
    return alg
