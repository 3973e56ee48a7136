"""EAR: claims set, ES256 compact JWS round trip, and refusal of tampered or re-algorithmed
tokens."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attest.appraisal.claims import Claim, Finding
from attest.appraisal.ear import EAR_PROFILE, ear_claims, result_ear, sign_ear, submod, verify_ear
from attest.appraisal.engine import _summarise
from attest.errors import EvidenceFormatError, SignatureError

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _result() -> object:
    return _summarise(
        [
            Finding(Claim.INSTANCE_IDENTITY, 2, "quote", "quote ok"),
            Finding(Claim.FILE_SYSTEM, 96, "verity", "dm-verity root hash 00 is not blessed"),
        ],
        node_id="node-7",
        nonce=b"n" * 32,
        now=NOW,
        policy_id="attest/default@1",
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_ear_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    r = _result()
    token = result_ear(r, key, now=NOW)  # type: ignore[arg-type]
    claims = verify_ear(token, key.public_key())
    assert claims["eat_profile"] == EAR_PROFILE
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["eat_nonce"] == _b64(b"n" * 32)
    assert claims["ear.verifier-id"]["developer"] == "attest"
    sm = claims["submods"]["node-7"]
    assert sm["ear.status"] == "contraindicated"
    assert sm["ear.trustworthiness-vector"] == {"instance-identity": 2, "file-system": 96}
    assert sm["ear.appraisal-policy-id"] == "attest/default@1"
    assert sm["attest.explanation"]["first_divergence"] == "dm-verity root hash 00 is not blessed"
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "typ": "JWT"}
    assert len(base64.urlsafe_b64decode(token.split(".")[2] + "==")) == 64  # raw r || s


def test_submods_map_is_general() -> None:
    r = _result()
    claims = ear_claims({"host": submod(r), "guest": submod(r)}, now=NOW)  # type: ignore[arg-type]
    assert set(claims["submods"]) == {"host", "guest"} and "eat_nonce" not in claims


def test_tampered_ear_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = result_ear(_result(), key, now=NOW)  # type: ignore[arg-type]
    h, p, s = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["submods"]["node-7"]["ear.status"] = "affirming"
    forged = f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    with pytest.raises(SignatureError):
        verify_ear(forged, key.public_key())


def test_ear_signed_by_another_key_is_refused() -> None:
    token = result_ear(_result(), ec.generate_private_key(ec.SECP256R1()), now=NOW)  # type: ignore[arg-type]
    with pytest.raises(SignatureError):
        verify_ear(token, ec.generate_private_key(ec.SECP256R1()).public_key())


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "es256"])
def test_algorithm_is_pinned_to_es256(alg: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = sign_ear(ear_claims({"n": submod(_result())}, now=NOW), key)  # type: ignore[arg-type]
    _, p, s = token.split(".")
    h = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    with pytest.raises(SignatureError, match="alg"):
        verify_ear(f"{h}.{p}.{s if alg != 'none' else ''}", key.public_key())


def test_critical_header_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = sign_ear(ear_claims({"n": submod(_result())}, now=NOW), key)  # type: ignore[arg-type]
    _, p, s = token.split(".")
    h = _b64(json.dumps({"alg": "ES256", "crit": ["exp"]}).encode())
    with pytest.raises(SignatureError, match="critical"):
        verify_ear(f"{h}.{p}.{s}", key.public_key())


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30." + "A" * 86])
def test_malformed_tokens_raise_the_documented_errors(token: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises((EvidenceFormatError, SignatureError)):
        verify_ear(token, key.public_key())


def test_es256_needs_a_p256_key() -> None:
    with pytest.raises(ValueError, match="P-256"):
        sign_ear({"x": 1}, ec.generate_private_key(ec.SECP384R1()))


_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _s(token: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(token.split(".")[2] + "==")[32:], "big")


def test_signer_emits_low_s_only() -> None:
    """ECDSA picks a random k: about half of the raw signatures have s > n/2. Every token the
    signer emits has the low-S form, over many signatures."""
    key = ec.generate_private_key(ec.SECP256R1())
    claims = ear_claims({"n": submod(_result())}, now=NOW)  # type: ignore[arg-type]
    for _ in range(64):
        token = sign_ear(claims, key)
        assert 0 < _s(token) <= _N // 2
        verify_ear(token, key.public_key())


def test_high_s_twin_of_a_valid_signature_is_refused() -> None:
    """(r, n - s) verifies under plain ECDSA whenever (r, s) does: a second token of other
    bytes for the same result. verify_ear refuses it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    token = result_ear(_result(), key, now=NOW)  # type: ignore[arg-type]
    h, p, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = int.from_bytes(raw[:32], "big"), _s(token)
    twin = f"{h}.{p}.{_b64(raw[:32] + (_N - s).to_bytes(32, 'big'))}"
    # The twin is a valid ECDSA signature (the malleability this guards against) ...
    key.public_key().verify(
        encode_dss_signature(r, _N - s), f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())
    )
    # ... which verify_ear refuses, while it accepts the original.
    with pytest.raises(SignatureError, match="high S"):
        verify_ear(twin, key.public_key())
    assert verify_ear(token, key.public_key())["submods"]["node-7"]


def test_non_canonical_base64url_spelling_is_refused() -> None:
    """The 64-byte signature is 86 base64url characters: the last carries 2 unused bits. A
    re-spelling with those bits set decodes to the same bytes; it is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = result_ear(_result(), key, now=NOW)  # type: ignore[arg-type]
    h, p, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]
    assert base64.urlsafe_b64decode(respelled + "==") == base64.urlsafe_b64decode(sig + "==")
    assert respelled != sig
    with pytest.raises(EvidenceFormatError, match="canonical"):
        verify_ear(f"{h}.{p}.{respelled}", key.public_key())
