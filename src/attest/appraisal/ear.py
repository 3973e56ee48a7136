"""Attestation results: EAR (draft-fv-rats-ear, Veraison's profile) as a signed JWT. Pure.

An EAR is a JWT (RFC 7519) signed with ES256 (RFC 7518 §3.4: ECDSA P-256 SHA-256, the
signature the raw ``r || s``, 64 bytes) in the JWS compact serialization (RFC 7515 §7.1)::

    {"eat_profile": "tag:github.com,2023:veraison/ear",
     "iat": 1735689600,
     "ear.verifier-id": {"developer": "attest", "build": "attest 0.x"},
     "eat_nonce": "<base64url of the challenge nonce>",
     "submods": {"<node-id>": {
         "ear.status": "affirming" | "warning" | "contraindicated" | "none",
         "ear.trustworthiness-vector": {"instance-identity": 2, "executables": 2, ...},
         "ear.appraisal-policy-id": "attest/default@1",
         "attest.verdict": "affirming" | ... | "alarm" | "could-not-appraise",
         "attest.explanation": {"first_divergence": str | null, "explanations": [...]}}}}

``submods`` is a general map: one node today; host and guest submodules later (issue 9).

    token = sign_ear(ear_claims({node_id: submod(result)}, now=..., nonce=...), key)
    claims = verify_ear(token, public_key)      # signature checked, alg pinned to ES256
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from attest import __version__
from attest.appraisal import AppraisalResult
from attest.appraisal.claims import Tier
from attest.errors import EvidenceFormatError, SignatureError

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
ALG = "ES256"
MAX_TOKEN = 1 << 20
_ES256 = ec.ECDSA(hashes.SHA256())
# The order of the P-256 group (SEC 2 §2.4.2 / FIPS 186-4 D.1.2.3): an ECDSA signature
# (r, s) verifies exactly when (r, n - s) does.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
STATUSES = tuple(t.label for t in Tier)  # none, affirming, warning, contraindicated


def verifier_id(build: str | None = None) -> dict[str, str]:
    return {"developer": "attest", "build": build or f"attest {__version__}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str, what: str) -> bytes:
    """Strict unpadded base64url: the one encoding of the bytes (RFC 4648 §3.5: the unused
    bits of the last character must be zero), so that a token has no second spelling."""
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise EvidenceFormatError(f"EAR {what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"EAR {what} is not base64url") from None
    if b64url(data) != text:
        raise EvidenceFormatError(f"EAR {what} is not canonical base64url")
    return data


def submod(result: AppraisalResult) -> dict[str, Any]:
    """One appraisal as an EAR submodule."""
    return {
        "ear.status": result.status,
        "ear.trustworthiness-vector": result.trustworthiness_vector,
        "ear.appraisal-policy-id": result.policy_id,
        "attest.verdict": result.verdict.value,
        "attest.enrollment": result.enrollment,
        "attest.release": None
        if result.release is None or result.release.release is None
        else {
            "version": result.release.release.version,
            "status": result.release.status.value,
        },
        "attest.explanation": {
            "first_divergence": result.first_divergence,
            "explanations": list(result.explanations),
        },
    }


def ear_claims(
    submods: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    nonce: bytes | None = None,
    build: str | None = None,
) -> dict[str, Any]:
    """The EAR claims set over the given submodules (name -> ``submod(result)``)."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not submods:
        raise ValueError("an EAR needs at least one submodule")
    for name, sm in submods.items():
        if sm.get("ear.status") not in STATUSES:
            raise ValueError(f"submodule {name!r}: ear.status {sm.get('ear.status')!r}")
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": int(now.timestamp()),
        "ear.verifier-id": verifier_id(build),
        "submods": {name: dict(sm) for name, sm in submods.items()},
    }
    if nonce is not None:
        claims["eat_nonce"] = b64url(nonce)
    return claims


def result_ear(
    result: AppraisalResult,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    kid: str | None = None,
) -> str:
    """Convenience: one appraisal as a signed EAR (the submodule is named by the node id)."""
    return sign_ear(
        ear_claims({result.node_id or "node": submod(result)}, now=now, nonce=result.nonce),
        key,
        kid=kid,
    )


def _check_key(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")


@functools.lru_cache(maxsize=16)
def _header(kid: str | None) -> str:
    """The encoded JWS protected header (the same for every token of one key: computed once)."""
    header: dict[str, str] = {"alg": ALG, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def sign_ear(
    claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, *, kid: str | None = None
) -> str:
    """JWS compact serialization (RFC 7515 §7.1) of ``claims`` with ES256. The signature is
    normalised to low S (``s <= n/2``), the only form ``verify_ear`` accepts."""
    _check_key(key)
    signing_input = (
        _header(kid)
        + "."
        + b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), _ES256))
    if s > _P256_N // 2:
        s = _P256_N - s
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def verify_ear(token: str, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Verify an EAR and return its claims, or raise (``EvidenceFormatError`` for a token that
    does not parse, ``SignatureError`` for one that does not verify).

    The algorithm is pinned: the header must say ES256 (RFC 8725 §3.1 -- never let the token
    choose, so ``none`` or an HMAC keyed with the public key cannot pass), and must carry no
    ``crit`` extension we do not understand (RFC 7515 §4.1.11).

    ECDSA is malleable: whoever holds a valid token can make a second valid one of other bytes
    by replacing ``s`` with ``n - s`` (or by re-spelling a base64url segment). Relying parties
    may deduplicate or cache results by the token's bytes, so each result must have one
    spelling: the signer emits low S only, and this refuses a high ``s`` (``SignatureError``)
    and non-canonical base64url (``EvidenceFormatError``), as Bitcoin's BIP 62 and Ethereum's
    EIP-2 do for the same reason.
    """
    _check_key(public_key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise EvidenceFormatError("EAR is not a string of at most 1 MiB")
    parts = token.split(".")
    if len(parts) != 3:
        raise EvidenceFormatError("EAR is not a JWS compact serialization (3 parts)")
    header = _json(unb64url(parts[0], "header"), "header")
    if header.get("alg") != ALG:
        raise SignatureError(f"EAR alg {str(header.get('alg'))[:16]!r} is not {ALG}")
    if "crit" in header:
        raise SignatureError("EAR header has critical extensions this verifier does not know")
    sig = unb64url(parts[2], "signature")
    if len(sig) != 64:
        raise SignatureError(f"ES256 signature is {len(sig)} bytes, not 64")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if s > _P256_N // 2:
        raise SignatureError("ES256 signature has a high S (not the signer's canonical form)")
    der = encode_dss_signature(r, s)
    try:
        public_key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), _ES256)
    except InvalidSignature:
        raise SignatureError("the EAR signature does not verify with the verifier's key") from None
    claims = _json(unb64url(parts[1], "payload"), "payload")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise EvidenceFormatError(f"EAR profile is not {EAR_PROFILE}")
    if not isinstance(claims.get("submods"), dict) or not isinstance(claims.get("iat"), int):
        raise EvidenceFormatError("EAR lacks submods or iat")
    return claims


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise EvidenceFormatError(f"EAR {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise EvidenceFormatError(f"EAR {what} is not a JSON object")
    return doc


# --- the verifier's public key as a JWK (RFC 7517), for relying parties ----------------------


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public JWK: base64url SHA-256 of its required members
    (crv, kty, x, y) in lexicographic order, no whitespace. Used as the key id (``kid``)."""
    import hashlib

    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK (RFC 7518 §6.2) of an ES256 key, with ``kid`` its RFC 7638 thumbprint."""
    _check_key(key)
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    nums = pub.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(nums.x.to_bytes(32, "big")),
        "y": b64url(nums.y.to_bytes(32, "big")),
    }
    return {**jwk, "alg": ALG, "use": "sig", "kid": jwk_thumbprint(jwk)}


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a JWK (what ``verify_ear`` takes), or ``EvidenceFormatError``:
    only ``kty`` EC on ``crv`` P-256 with 32-byte coordinates on the curve, no private part."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise EvidenceFormatError("the JWK is not an EC P-256 key")
    if "d" in jwk:
        raise EvidenceFormatError("the JWK carries a private key")
    if jwk.get("alg", ALG) != ALG:
        raise EvidenceFormatError(f"the JWK is for {str(jwk.get('alg'))[:16]!r}, not {ALG}")
    x, y = unb64url(jwk.get("x"), "JWK x"), unb64url(jwk.get("y"), "JWK y")  # type: ignore[arg-type]
    if len(x) != 32 or len(y) != 32:
        raise EvidenceFormatError("the JWK's coordinates are not 32 bytes")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError:
        raise EvidenceFormatError("the JWK's point is not on P-256") from None
