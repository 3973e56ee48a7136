"""Attestation results: EAR (draft-ietf-rats-ear, "EAT Attestation Results") as a signed JWT
or CWT. Pure.

An EAR is an EAT (RFC 9711) serialised either as a JWT (RFC 7519) signed with ES256 (RFC 7518
§3.4: ECDSA P-256 SHA-256, the signature the raw ``r || s``, 64 bytes) in the JWS compact
serialization (RFC 7515 §7.1), or as a CWT (RFC 8392): a tagged COSE_Sign1 (RFC 9052 §4.2,
algorithm -7 = ES256, the same raw ``r || s`` per RFC 9053 §2.1) over a CBOR map with the
integer claim keys of the draft (``CWT_KEYS`` below). The claims, in their JSON form::

    {"eat_profile": "tag:github.com,2023:veraison/ear",
     "iat": 1735689600,
     "exp": 1735693200,
     "ear.verifier-id": {"developer": "attest", "build": "attest 0.x"},
     "eat_nonce": "<base64url of the challenge nonce>",
     "submods": {"<node-id>": {
         "ear.status": "affirming" | "warning" | "contraindicated" | "none",
         "ear.trustworthiness-vector": {"instance-identity": 2, "executables": 2, ...},
         "ear.appraisal-policy-id": "attest/default@3;registry=12@sha256:<hex>",
         "attest.collateral": {"registry": {"sequence": 12, "sha256": "<hex>"}, ...},
         "attest.verdict": "affirming" | ... | "alarm" | "could-not-appraise",
         "attest.explanation": {"first_divergence": str | null, "explanations": [...]}}}}

``submods`` is a general map: one node, or a host and a guest (``attest.appraisal.pair``).
The draft defines no top-level status: each submodule carries its own ``ear.status``. ``exp``
is RFC 7519 §4.1.4 / RFC 8392 §3.1.4 (a registered claim, allowed by the draft's
``$$ear-extension``). Our own claims (``attest.*``) are unregistered extensions, text-named in
both serialisations.

    token = sign_ear(ear_claims({node_id: submod(result)}, now=..., nonce=...), key)
    claims = verify_ear(token, public_key)      # signature checked, alg pinned to ES256
    cwt = sign_cwt(claims, key)                 # the same claims as a CWT (bytes)
    fmt, claims = verify_token(jwt_or_cwt, public_key, now=..., nonce=...)
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import cbor2
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from attest import __version__, cose
from attest.appraisal.claims import Tier
from attest.cose import ES256
from attest.errors import EarTimeError, EvidenceFormatError, NonceError, SignatureError
from attest.manifest import canonicalize

if TYPE_CHECKING:  # types only: verifying an EAR loads neither the appraisal nor the registry
    from attest.appraisal.engine import AppraisalResult
    from attest.manifest import VerifiedRegistry

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
# The profile Trustee (confidential-containers' attestation service) puts in EARs of the same
# claims set: accepted by ``verify_token`` when asked (``attest ear verify``), never emitted.
TRUSTEE_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ALG = "ES256"
DEFAULT_TTL = 3600  # seconds from iat to exp
MAX_TOKEN = 1 << 20
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


def submod(result: AppraisalResult, found: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One appraisal as an EAR submodule; ``found``: its ``collateral(...)``, named in the
    policy id and carried as ``attest.collateral``."""
    extra = {} if not found else {"attest.collateral": dict(found)}
    return {
        "ear.status": result.status,
        "ear.trustworthiness-vector": result.trustworthiness_vector,
        "ear.appraisal-policy-id": policy_id_with(result.policy_id, found or {}),
        **extra,
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


def collateral(
    registry: VerifiedRegistry | None,
    platform_id: str | None = None,
    ek_roots: Sequence[bytes] = (),
) -> dict[str, Any]:
    """What an appraisal was measured against, by hash, so that an auditor holding the same
    files can re-run it (the ``attest.collateral`` submodule claim): the blessed registry (the
    SHA-256 of its canonical file, and its sequence), the platform reference used for the
    firmware PCRs (the SHA-256 of its signed canonical form, RFC 8785), and the EK trust
    anchors an enrollment in this appraisal was checked against (the SHA-256 over the sorted
    SHA-256s of their DER)."""
    out: dict[str, Any] = {}
    if registry is not None:
        out["registry"] = {
            "sequence": registry.snapshot.sequence,
            "sha256": hashlib.sha256(registry.raw).hexdigest(),
        }
        ref = registry.snapshot.platforms.get(platform_id) if platform_id else None
        if ref is not None:
            out["platform-reference"] = {
                "id": platform_id,
                "sha256": hashlib.sha256(canonicalize(ref.to_json())).hexdigest(),
            }
    if ek_roots:
        digests = sorted(hashlib.sha256(der).digest() for der in ek_roots)
        out["ek-roots"] = {
            "count": len(digests),
            "sha256": hashlib.sha256(b"".join(digests)).hexdigest(),
        }
    return out


def policy_id_with(policy_id: str, found: Mapping[str, Any]) -> str:
    """The appraisal policy id naming the exact registry too: ``POLICY;registry=SEQ@sha256:HEX``
    (the policy alone when no registry was used)."""
    reg = found.get("registry")
    if not reg:
        return policy_id
    return f"{policy_id};registry={reg['sequence']}@sha256:{reg['sha256']}"


def ear_claims(
    submods: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    nonce: bytes | None = None,
    build: str | None = None,
    ttl: int | None = DEFAULT_TTL,
) -> dict[str, Any]:
    """The EAR claims set over the given submodules (name -> ``submod(result)``); ``exp`` is
    ``ttl`` seconds after ``iat`` (none when ``ttl`` is None)."""
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
    if ttl is not None:
        claims["exp"] = claims["iat"] + ttl
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


def result_claims(
    result: AppraisalResult, *, now: datetime, found: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One appraisal's EAR claims (the submodule is named by the node id)."""
    return ear_claims(
        {result.node_id or "node": submod(result, found)}, now=now, nonce=result.nonce
    )


def sign_as(
    fmt: str, claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, *, kid: str | None = None
) -> tuple[bytes, str]:
    """``claims`` signed as ``fmt`` ("jwt" or "cwt"): (the token's bytes, its text for JSON
    documents: the JWT itself, or the CWT in base64url)."""
    if fmt == "cwt":
        cwt = sign_cwt(claims, key, kid=kid)
        return cwt, b64url(cwt)
    if fmt != "jwt":
        raise ValueError(f"EAR format {fmt!r} is not jwt or cwt")
    jwt = sign_ear(claims, key, kid=kid)
    return jwt.encode("ascii"), jwt


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
    signing_input = _header(kid) + "." + b64url(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))
    return signing_input + "." + b64url(cose.ecdsa_sign(key, signing_input.encode("ascii"), ES256))


def verify_ear(
    token: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    low_s: bool = True,
    profiles: tuple[str, ...] = (EAR_PROFILE,),
) -> dict[str, Any]:
    """Verify a JWT EAR and return its claims, or raise (``EvidenceFormatError`` for a token
    that does not parse, ``SignatureError`` for one that does not verify).

    The algorithm is pinned: the header must say ES256 (RFC 8725 §3.1 -- never let the token
    choose, so ``none`` or an HMAC keyed with the public key cannot pass), and must carry no
    ``crit`` extension we do not understand (RFC 7515 §4.1.11).

    ECDSA is malleable: whoever holds a valid token can make a second valid one of other bytes
    by replacing ``s`` with ``n - s`` (or by re-spelling a base64url segment). Relying parties
    may deduplicate or cache results by the token's bytes, so each result must have one
    spelling: the signer emits low S only, and this refuses a high ``s`` (``SignatureError``)
    and non-canonical base64url (``EvidenceFormatError``), as Bitcoin's BIP 62 and Ethereum's
    EIP-2 do for the same reason. ``low_s=False`` accepts a high ``s`` too: for tokens of other
    signers (Veraison's and Trustee's libraries do not normalise), checked one at a time.
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
    cose.ecdsa_verify(
        public_key, sig, f"{parts[0]}.{parts[1]}".encode("ascii"), ES256, low_s=low_s, what="EAR"
    )
    return _check_claims(_json(unb64url(parts[1], "payload"), "payload"), profiles)


def _check_claims(claims: dict[str, Any], profiles: tuple[str, ...]) -> dict[str, Any]:
    """The draft's mandatory claims: a known profile, an integer iat, a non-empty submods map
    whose every appraisal has an ``ear.status`` tier."""
    if claims.get("eat_profile") not in profiles:
        raise EvidenceFormatError(
            f"EAR profile {str(claims.get('eat_profile'))[:64]!r} is not {' or '.join(profiles)}"
        )
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods or type(claims.get("iat")) is not int:
        raise EvidenceFormatError("EAR lacks submods or iat")
    if "exp" in claims and type(claims["exp"]) is not int:
        raise EvidenceFormatError("EAR exp is not an integer")
    for name, sm in submods.items():
        if not isinstance(sm, dict) or sm.get("ear.status") not in STATUSES:
            raise EvidenceFormatError(f"EAR submodule {str(name)[:64]!r} has no ear.status tier")
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


# --- the CWT serialisation (COSE_Sign1 over a CBOR claims map with integer keys) -------------

# Claim keys: draft-ietf-rats-ear's CDDL (``ear.cddl``, ``ear-appraisal.cddl``: the EAR claims
# 1000-1004, marked "suggested" pending IANA), RFC 9711 (EAT: eat_nonce 10, eat_profile 265,
# submods 266), RFC 8392 (CWT: exp 4, iat 6); the AR4SI vocabulary of the draft (``ar4si.cddl``:
# the vector's claims 0-7, the tiers none 0 / affirming 2 / warning 32 / contraindicated 96,
# the verifier id's developer 0 / build 1); Veraison's registered-by-use extensions
# (``ext-veraison.cddl``: -70000..-70002) and the TEEP one (65000), so that their tokens decode.
CWT_KEYS: dict[str, int] = {
    "exp": 4,
    "iat": 6,
    "eat_nonce": 10,
    "eat_profile": 265,
    "submods": 266,
    "ear.raw-evidence": 1002,
    "ear.verifier-id": 1004,
}
SUBMOD_KEYS: dict[str, int] = {
    "ear.status": 1000,
    "ear.trustworthiness-vector": 1001,
    "ear.appraisal-policy-id": 1003,
    "ear.teep-claims": 65000,
    "ear.veraison.annotated-evidence": -70000,
    "ear.veraison.policy-claims": -70001,
    "ear.veraison.key-attestation": -70002,
}
VECTOR_KEYS: dict[str, int] = {
    "instance-identity": 0,
    "configuration": 1,
    "executables": 2,
    "file-system": 3,
    "hardware": 4,
    "runtime-opaque": 5,
    "storage-opaque": 6,
    "sourced-data": 7,
}
TIER_VALUES: dict[str, int] = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
VERIFIER_ID_KEYS: dict[str, int] = {"developer": 0, "build": 1}
_BYTES_CLAIMS = ("eat_nonce", "ear.raw-evidence")  # bytes in CBOR, base64url text in JSON

CWT_TAG = 61  # RFC 8392 §6: optional, around the COSE tag (COSE_Sign1 and ES256: attest.cose)


def _inverse(keys: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in keys.items()}


_CWT_NAMES = _inverse(CWT_KEYS)
_SUBMOD_NAMES = _inverse(SUBMOD_KEYS)
_VECTOR_NAMES = _inverse(VECTOR_KEYS)
_TIER_NAMES = _inverse(TIER_VALUES)
_VERIFIER_ID_NAMES = _inverse(VERIFIER_ID_KEYS)


def _keyed(doc: Mapping[str, Any], keys: Mapping[str, int]) -> dict[Any, Any]:
    return {keys.get(k, k): v for k, v in doc.items()}


def cbor_claims(claims: Mapping[str, Any]) -> dict[Any, Any]:
    """The JSON form of an EAR (what ``ear_claims`` makes) -> its CBOR form (integer keys,
    integer tiers, byte strings). Keys the draft does not number stay text."""
    out: dict[Any, Any] = {}
    for name, value in claims.items():
        if name in _BYTES_CLAIMS:
            value = _unb64_any(value, name)
        elif name == "ear.verifier-id" and isinstance(value, Mapping):
            value = _keyed(value, VERIFIER_ID_KEYS)
        elif name == "submods" and isinstance(value, Mapping):
            value = {label: _cbor_submod(sm) for label, sm in value.items()}
        out[CWT_KEYS.get(name, name)] = value
    return out


def _cbor_submod(sm: Mapping[str, Any]) -> dict[Any, Any]:
    out = _keyed(sm, SUBMOD_KEYS)
    status = SUBMOD_KEYS["ear.status"]
    if out.get(status) in TIER_VALUES:
        out[status] = TIER_VALUES[out[status]]
    vector = SUBMOD_KEYS["ear.trustworthiness-vector"]
    if isinstance(out.get(vector), Mapping):
        out[vector] = _keyed(out[vector], VECTOR_KEYS)
    return out


def json_claims(doc: Mapping[Any, Any]) -> dict[str, Any]:
    """The CBOR form of an EAR -> its JSON form (the inverse of ``cbor_claims``), so that both
    serialisations verify to the same claims. Byte strings anywhere become base64url text;
    integer keys the draft does not name become their decimal text."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = _CWT_NAMES.get(key, key) if isinstance(key, int) else key
        if name == "ear.verifier-id" and isinstance(value, Mapping):
            value = _named(value, _VERIFIER_ID_NAMES)
        elif name == "submods" and isinstance(value, Mapping):
            value = {str(label): _json_submod(sm) for label, sm in value.items()}
        out[_text_key(name)] = _jsonable(value)
    return out


def _json_submod(sm: Any) -> Any:
    if not isinstance(sm, Mapping):
        return sm
    out: dict[str, Any] = {}
    for key, value in sm.items():
        name = _SUBMOD_NAMES.get(key, key) if type(key) is int else key
        if name == "ear.status" and type(value) is int:
            value = _TIER_NAMES.get(value, value)
        elif name == "ear.trustworthiness-vector" and isinstance(value, Mapping):
            value = _named(value, _VECTOR_NAMES)
        out[_text_key(name)] = _jsonable(value)
    return out


def _named(doc: Mapping[Any, Any], names: Mapping[int, str]) -> dict[str, Any]:
    return {
        _text_key(names.get(k, k) if type(k) is int else k): _jsonable(v) for k, v in doc.items()
    }


def _text_key(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, Mapping):
        return {_text_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _unb64_any(value: Any, what: str) -> bytes:
    """base64url (ours, unpadded) or padded standard base64 (seen in Veraison's rust-ear
    tokens) -> bytes."""
    if not isinstance(value, str):
        raise EvidenceFormatError(f"EAR {what} is not base64 text")
    try:
        return base64.b64decode(
            value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"EAR {what} is not base64") from None


@functools.lru_cache(maxsize=16)
def _protected(kid: str | None) -> bytes:
    header: dict[int, Any] = {cose.HDR_ALG: ES256.cose_id}
    if kid is not None:
        header[cose.HDR_KID] = kid.encode()
    return cose.encode_protected(header)


def sign_cwt(
    claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, *, kid: str | None = None
) -> bytes:
    """The EAR ``claims`` (JSON form) as a CWT: a COSE_Sign1 (tag 18) with ES256 in the
    protected header (and ``kid`` when given), the payload the deterministic CBOR (RFC 8949
    §4.2) of ``cbor_claims(claims)``, the signature low-S raw ``r || s``."""
    _check_key(key)
    payload = bytes(cbor2.dumps(cbor_claims(claims), canonical=True))
    return cose.sign1(payload, key, protected=_protected(kid))


def _cbor(data: bytes, what: str) -> Any:
    """One CBOR item filling ``data`` exactly: no trailing bytes, no duplicate map keys."""
    return cose.decode_cbor(data, error=EvidenceFormatError, what=f"EAR {what}")


def verify_cwt(
    token: bytes,
    public_key: ec.EllipticCurvePublicKey,
    *,
    low_s: bool = True,
    profiles: tuple[str, ...] = (EAR_PROFILE,),
) -> dict[str, Any]:
    """Verify a CWT EAR and return its claims in the JSON form (``json_claims``), or raise as
    ``verify_ear`` does. A COSE_Sign1, tagged 18 (optionally inside the CWT tag 61) or untagged;
    the protected header must say ES256 (-7) and carry no ``crit``; the unprotected header must
    not name an algorithm; the payload must be attached."""
    _check_key(public_key)
    if not isinstance(token, bytes) or len(token) > MAX_TOKEN:
        raise EvidenceFormatError("CWT EAR is not bytes of at most 1 MiB")
    item = _cbor(token, "CWT")
    if isinstance(item, cbor2.CBORTag) and item.tag == CWT_TAG:
        item = item.value
    msg = cose.parse_sign1(item, error=EvidenceFormatError, what="CWT EAR")
    cose.verify_sign1(msg, public_key, allowed=(ES256,), low_s=low_s, what="CWT EAR")
    doc = _cbor(msg.payload, "payload")
    if not isinstance(doc, Mapping):
        raise EvidenceFormatError("CWT EAR payload is not a CBOR map")
    return _check_claims(json_claims(doc), profiles)


def token_format(token: str | bytes) -> str:
    """``"jwt"`` or ``"cwt"``: a JWT is ASCII text of three dot-separated parts; anything that
    starts like a CBOR tag or array is a CWT."""
    if isinstance(token, str):
        return "jwt"
    text = token.strip()
    return "jwt" if text.isascii() and text.count(b".") == 2 else "cwt"


def verify_token(
    token: str | bytes,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: datetime | None = None,
    nonce: bytes | None = None,
    leeway: int = 60,
    low_s: bool = True,
    profiles: tuple[str, ...] = (EAR_PROFILE,),
) -> tuple[str, dict[str, Any]]:
    """Verify a JWT or CWT EAR: signature (ES256 only), then, with ``now``, that it is not past
    ``exp`` nor issued after ``now`` (``leeway`` seconds of clock skew either way:
    ``EarTimeError``), and, with ``nonce``, that ``eat_nonce`` is that nonce (``NonceError``).
    Returns the format and the claims (JSON form)."""
    fmt = token_format(token)
    if fmt == "jwt":
        text = token if isinstance(token, str) else _ascii(token)
        claims = verify_ear(text.strip(), public_key, low_s=low_s, profiles=profiles)
    else:
        assert isinstance(token, bytes)
        claims = verify_cwt(token, public_key, low_s=low_s, profiles=profiles)
    if now is not None:
        t = int(now.timestamp())
        if claims["iat"] > t + leeway:
            raise EarTimeError(f"EAR issued at {claims['iat']}, after now ({t})")
        if "exp" in claims and t >= claims["exp"] + leeway:
            raise EarTimeError(f"EAR expired at {claims['exp']} (now {t})")
    if nonce is not None:
        got = claims.get("eat_nonce")
        if got is None:
            raise NonceError("EAR carries no eat_nonce; a nonce was expected")
        if _unb64_any(got, "eat_nonce") != nonce:
            raise NonceError("EAR eat_nonce is not the expected nonce")
    return fmt, claims


def _ascii(token: bytes) -> str:
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise EvidenceFormatError("JWT EAR is not ASCII") from None


def token_kid(token: str | bytes) -> str | None:
    """The key id a JWT or CWT EAR names (JWS ``kid``; COSE protected or unprotected label 4),
    read without verifying anything: only to choose among a verifier's keys. None when the
    token names none or does not parse."""
    try:
        if token_format(token) == "jwt":
            text = token if isinstance(token, str) else _ascii(token)
            kid = _json(unb64url(text.strip().split(".")[0], "header"), "header").get("kid")
            return kid if isinstance(kid, str) else None
        assert isinstance(token, bytes)
        msg = _cbor(token, "CWT")
        while isinstance(msg, cbor2.CBORTag):
            msg = msg.value
        protected = _cbor(msg[0], "protected header") if msg[0] else {}
        raw = protected.get(cose.HDR_KID, msg[1].get(cose.HDR_KID))
        return raw.decode() if isinstance(raw, bytes) else None
    except (EvidenceFormatError, TypeError, IndexError, KeyError, AttributeError, ValueError):
        return None
