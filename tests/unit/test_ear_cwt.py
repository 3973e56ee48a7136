"""EAR in both serialisations of draft-ietf-rats-ear: the CWT (COSE_Sign1, integer keys) round
trip, the published examples of the draft and of Veraison's and Trustee's implementations,
independent libraries (pycose, joserfc) as oracles both ways, and tampered tokens refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.unit import ear_vectors as v

from attest import cose
from attest.appraisal.claims import Claim, Finding
from attest.appraisal.ear import (
    EAR_PROFILE,
    TRUSTEE_PROFILE,
    cbor_claims,
    json_claims,
    jwk_public_key,
    result_ear,
    sign_cwt,
    sign_ear,
    token_format,
    unb64url,
    verify_cwt,
    verify_ear,
    verify_token,
)
from attest.appraisal.engine import _summarise
from attest.errors import EarTimeError, EvidenceFormatError, NonceError, SignatureError

NOW = datetime(2025, 6, 1, tzinfo=UTC)
NONCE = b"n" * 32


def _result() -> object:
    return _summarise(
        [
            Finding(Claim.INSTANCE_IDENTITY, 2, "quote", "quote ok"),
            Finding(Claim.FILE_SYSTEM, 96, "verity", "dm-verity root hash 00 is not blessed"),
        ],
        node_id="node-7",
        nonce=NONCE,
        now=NOW,
        policy_id="attest/default@1",
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def claims(key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    return verify_ear(result_ear(_result(), key, now=NOW), key.public_key())  # type: ignore[arg-type]


# --- round trips -------------------------------------------------------------------------------


def test_cwt_round_trip_gives_the_jwt_claims(key: ec.EllipticCurvePrivateKey, claims: dict) -> None:  # type: ignore[type-arg]
    cwt = sign_cwt(claims, key)
    assert verify_cwt(cwt, key.public_key()) == claims
    assert claims["exp"] == claims["iat"] + 3600  # type: ignore[operator]
    msg = cbor2.loads(cwt)
    assert msg.tag == 18
    protected, unprotected, payload, sig = msg.value
    assert cbor2.loads(protected) == {1: -7} and unprotected == {} and len(sig) == 64
    doc = cbor2.loads(payload)
    # The draft's integer keys, integer tiers and AR4SI vector keys, bytes for the nonce.
    assert doc[265] == EAR_PROFILE and doc[6] == int(NOW.timestamp()) and doc[4] == doc[6] + 3600
    assert doc[10] == NONCE
    assert doc[1004] == {0: "attest", 1: claims["ear.verifier-id"]["build"]}  # type: ignore[index]
    sm = doc[266]["node-7"]
    assert sm[1000] == 96 and sm[1001] == {0: 2, 3: 96} and sm[1003] == "attest/default@1"
    assert sm["attest.verdict"] == claims["submods"]["node-7"]["attest.verdict"]  # type: ignore[index]
    # Deterministic encoding: the same claims give the same payload.
    assert cbor2.loads(sign_cwt(claims, key)).value[2] == payload


def test_verify_token_detects_the_format(key: ec.EllipticCurvePrivateKey, claims: dict) -> None:  # type: ignore[type-arg]
    jwt = sign_ear(claims, key)
    cwt = sign_cwt(claims, key, kid="k1")
    assert token_format(jwt) == "jwt" and token_format(jwt.encode() + b"\n") == "jwt"
    assert token_format(cwt) == "cwt"
    for token, fmt in ((jwt, "jwt"), (jwt.encode() + b"\n", "jwt"), (cwt, "cwt")):
        got = verify_token(token, key.public_key(), now=NOW, nonce=NONCE)
        assert got == (fmt, claims)
    assert cbor2.loads(cbor2.loads(cwt).value[0]) == {1: -7, 4: b"k1"}


# --- the draft's examples (draft-ietf-rats-ear; its source repository thomas-fossati/draft-ear,
# cddl/examples/ear-json-1.diag and ear-cbor-1.diag at 51c1291, copied as facts) -------------

DRAFT_JSON_1 = {
    "eat_profile": "tag:github.com,2023:veraison/ear",
    "iat": 1666529184,
    "ear.verifier-id": {"developer": "https://veraison-project.org", "build": "vts 0.0.1"},
    "ear.raw-evidence": "NzQ3MjY5NzM2NTYzNzQK",
    "submods": {
        "PSA": {
            "ear.status": "contraindicated",
            "ear.trustworthiness-vector": {
                "instance-identity": 2,
                "executables": 96,
                "hardware": 2,
            },
            "ear.appraisal-policy-id": "https://veraison.example/policy/1/60a0068d",
        }
    },
}
DRAFT_CBOR_1 = {
    265: "tag:github.com,2023:veraison/ear",
    6: 1666529184,
    1004: {0: "https://veraison-project.org", 1: "vts 0.0.1"},
    1002: bytes.fromhex("6C696665626F61746D616E"),
    266: {
        "PSA": {
            1000: 96,
            1001: {0: 2, 2: 96, 4: 2},
            1003: "https://veraison.example/policy/1/60a0068d",
        }
    },
}


def test_the_drafts_json_and_cbor_examples_map_onto_each_other(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    as_cbor = cbor_claims(DRAFT_JSON_1)
    # The two examples carry different raw evidence; everything else is the same claims set.
    assert {k: v for k, v in as_cbor.items() if k != 1002} == {
        k: v for k, v in DRAFT_CBOR_1.items() if k != 1002
    }
    assert as_cbor[1002] == base64.b64decode("NzQ3MjY5NzM2NTYzNzQK")
    back = json_claims(DRAFT_CBOR_1)
    assert back["submods"] == DRAFT_JSON_1["submods"]
    assert back["ear.raw-evidence"] == "bGlmZWJvYXRtYW4"  # base64url of h'6C69...'
    assert json_claims(as_cbor) == DRAFT_JSON_1 | {"ear.raw-evidence": "NzQ3MjY5NzM2NTYzNzQK"}
    # Both sign and verify in either serialisation.
    for claims in (DRAFT_JSON_1, back):
        assert (
            verify_cwt(sign_cwt(claims, key), key.public_key())["submods"]["PSA"]["ear.status"]
            == "contraindicated"
        )
        assert verify_ear(sign_ear(claims, key), key.public_key()) == claims


# github.com/veraison/rust-ear, src/ear.rs at 975ba6f, test ``serde``: the CBOR its serializer
# writes for a minimal EAR (indefinite-length maps), copied as facts.
RUST_EAR_CBOR = bytes(
    [0xBF, 0x19, 0x01, 0x09, 0x78, 0x20]
    + list(b"tag:github.com,2023:veraison/ear")
    + [0x06, 0x1A, 0x63, 0x55, 0x37, 0xA0, 0x19, 0x03, 0xEC, 0xA2, 0x00, 0x78, 0x1C]
    + list(b"https://veraison-project.org")
    + [0x01, 0x6A]
    + list(b"vsts 0.0.1")
    + [0x19, 0x01, 0x0A, 0xA1, 0x64]
    + list(b"test")
    + [0xBF, 0x19, 0x03, 0xE8, 0x00, 0xFF, 0x19, 0x03, 0xEA, 0x4F]
    + list(b"74726973656374\n")
    + [0xFF]
)


def test_rust_ear_cbor_claims_decode_and_verify_as_a_cwt(key: ec.EllipticCurvePrivateKey) -> None:
    doc = json_claims(cbor2.loads(RUST_EAR_CBOR))
    assert doc == {
        "eat_profile": EAR_PROFILE,
        "iat": 1666529184,
        "ear.verifier-id": {"developer": "https://veraison-project.org", "build": "vsts 0.0.1"},
        "submods": {"test": {"ear.status": "none"}},
        "ear.raw-evidence": base64.urlsafe_b64encode(b"74726973656374\n").rstrip(b"=").decode(),
    }
    # A COSE_Sign1 around rust-ear's own payload bytes (indefinite maps and all) verifies.
    from attest.appraisal.ear import _protected

    protected = _protected(None)
    sig = cose.ecdsa_sign(key, cose.sig_structure(protected, RUST_EAR_CBOR), cose.ES256)
    cwt = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, RUST_EAR_CBOR, sig]))
    assert verify_cwt(cwt, key.public_key()) == doc


# --- other implementations' published tokens (tests/unit/ear_vectors.py) ---------------------


@pytest.mark.parametrize(
    "token", [v.VERAISON_JWT, v.VERAISON_JWT_JWK, v.VERAISON_JWT_EXT, v.RUST_EAR_JWT]
)
def test_veraisons_published_tokens_verify(token: str) -> None:
    pub = jwk_public_key(v.VERAISON_PKEY)
    fmt, claims = verify_token(token, pub, low_s=False)
    assert fmt == "jwt" and claims["eat_profile"] == EAR_PROFILE
    assert all(sm["ear.status"] == "affirming" for sm in claims["submods"].values())
    # With another key, or a byte of the payload changed, they do not.
    with pytest.raises(SignatureError):
        verify_token(token, ec.generate_private_key(ec.SECP256R1()).public_key(), low_s=False)
    h, p, s = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["iat"] += 1
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(SignatureError):
        verify_token(f"{h}.{forged}.{s}", pub, low_s=False)


def test_rust_ear_token_nonce_is_checked() -> None:
    pub = jwk_public_key(v.VERAISON_PKEY)
    nonce = base64.b64decode("3WHyjndGOTI=")  # padded standard base64 in that token
    _, claims = verify_token(v.RUST_EAR_JWT, pub, low_s=False, nonce=nonce)
    assert claims["submods"]["PARSEC_TPM"]["ear.appraisal-policy-id"] == "policy:PARSEC_TPM"
    with pytest.raises(NonceError):
        verify_token(v.RUST_EAR_JWT, pub, low_s=False, nonce=b"\x00" * 8)
    with pytest.raises(NonceError, match="no eat_nonce"):
        verify_token(v.VERAISON_JWT, pub, low_s=False, nonce=nonce)


def test_high_s_foreign_tokens_are_refused_in_the_canonical_mode() -> None:
    """Veraison's Go library does not normalise S: two of its published tokens have a high S,
    which our canonical (default) mode refuses and ``low_s=False`` accepts."""
    with pytest.raises(SignatureError, match="high S"):
        verify_token(v.VERAISON_JWT, jwk_public_key(v.VERAISON_PKEY))


def test_trustee_token_verifies_in_its_profile_and_is_expired() -> None:
    header = json.loads(base64.urlsafe_b64decode(v.TRUSTEE_JWT.split(".")[0] + "=="))
    pub = jwk_public_key(header["jwk"])
    with pytest.raises(EvidenceFormatError, match="profile"):
        verify_token(v.TRUSTEE_JWT, pub, low_s=False)  # not ours unless asked
    profiles = (EAR_PROFILE, TRUSTEE_PROFILE)
    _, claims = verify_token(v.TRUSTEE_JWT, pub, low_s=False, profiles=profiles)
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    issued = datetime.fromtimestamp(claims["iat"], UTC)
    verify_token(v.TRUSTEE_JWT, pub, low_s=False, profiles=profiles, now=issued)
    with pytest.raises(EarTimeError, match="expired"):
        verify_token(
            v.TRUSTEE_JWT, pub, low_s=False, profiles=profiles, now=issued + timedelta(hours=1)
        )


# --- independent implementations as oracles ----------------------------------------------------


def test_pycose_verifies_our_cwt_and_we_verify_pycoses(
    key: ec.EllipticCurvePrivateKey,
    claims: dict,  # type: ignore[type-arg]
) -> None:
    from pycose.algorithms import Es256
    from pycose.headers import Algorithm
    from pycose.keys import EC2Key
    from pycose.keys.curves import P256
    from pycose.messages import Sign1Message

    nums = key.private_numbers()
    cose_key = EC2Key(
        crv=P256,
        x=nums.public_numbers.x.to_bytes(32, "big"),
        y=nums.public_numbers.y.to_bytes(32, "big"),
        d=nums.private_value.to_bytes(32, "big"),
    )
    # pycose 1.1's decode() wants a list where cbor2 6 gives a tagged item's array as a tuple:
    # hand it the decoded array as plain types (its from_cose_obj does the rest, as decode() does).
    protected, unprotected, payload, sig = cbor2.loads(sign_cwt(claims, key)).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, sig], True)
    msg.key = cose_key
    assert msg.verify_signature()
    assert cbor2.loads(msg.payload)[265] == EAR_PROFILE
    theirs = Sign1Message(
        phdr={Algorithm: Es256}, payload=cbor2.dumps(cbor_claims(claims)), key=cose_key
    ).encode()
    assert verify_cwt(theirs, key.public_key(), low_s=False) == claims


def test_joserfc_verifies_our_jwt_and_we_verify_joserfcs(
    key: ec.EllipticCurvePrivateKey,
    claims: dict,  # type: ignore[type-arg]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from joserfc import jwt
    from joserfc.jwk import ECKey

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    jkey = ECKey.import_key(pem)
    token = jwt.decode(sign_ear(claims, key), jkey, algorithms=["ES256"])
    assert token.header["alg"] == "ES256" and token.claims == claims
    theirs = jwt.encode({"alg": "ES256"}, claims, jkey, algorithms=["ES256"])
    assert verify_ear(theirs, key.public_key(), low_s=False) == claims


def test_jwt_payload_is_compact_sorted_utf8_json_and_non_ascii_text_survives(
    key: ec.EllipticCurvePrivateKey,
    claims: dict,  # type: ignore[type-arg]
) -> None:
    """The payload is written by orjson (the fleet signs one per appraisal): compact JSON with
    sorted keys, non-ASCII text as UTF-8 -- what json.dumps(sort_keys, ensure_ascii=False)
    writes -- and an explanation with such text comes back as signed, also through joserfc."""
    from cryptography.hazmat.primitives import serialization
    from joserfc import jwt
    from joserfc.jwk import ECKey

    odd = json.loads(json.dumps(claims))
    (sm,) = odd["submods"].values()
    sm["attest.explanation"]["explanations"] = ["AK 3f2a… refused: «é» \u2028 \U0001f512"]
    token = sign_ear(odd, key)
    payload = unb64url(token.split(".")[1], "payload")
    assert payload == json.dumps(
        odd, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    ).encode("utf-8")
    assert verify_ear(token, key.public_key()) == odd
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert jwt.decode(token, ECKey.import_key(pem), algorithms=["ES256"]).claims == odd


# --- tampering ---------------------------------------------------------------------------------


def _resign(
    key: ec.EllipticCurvePrivateKey, protected: bytes, unprotected: dict, payload: bytes
) -> bytes:  # type: ignore[type-arg]
    sig = cose.ecdsa_sign(key, cose.sig_structure(protected, payload), cose.ES256)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, sig]))


def test_tampered_cwts_are_refused(key: ec.EllipticCurvePrivateKey, claims: dict) -> None:  # type: ignore[type-arg]
    pub = key.public_key()
    cwt = sign_cwt(claims, key)
    protected, _, payload, sig = cbor2.loads(cwt).value
    # A claim changed after signing.
    doc = cbor2.loads(payload)
    doc[266]["node-7"][1000] = 2  # contraindicated -> affirming
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cbor2.dumps(doc), sig]))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cwt(forged, pub)
    # The header changed (a kid added) under the old signature.
    other = cbor2.dumps({1: -7, 4: b"x"})
    with pytest.raises(SignatureError):
        verify_cwt(cbor2.dumps(cbor2.CBORTag(18, [other, {}, payload, sig])), pub)
    # Another algorithm, even correctly signed; alg only in the unprotected header; crit.
    for prot, unprot in (
        (cbor2.dumps({1: -35}), {}),
        (cbor2.dumps({1: 5}), {}),  # HMAC 256/256
        (b"", {1: -7}),
        (cbor2.dumps({1: -7}), {1: -7}),
        (cbor2.dumps({1: -7, 2: [99]}), {}),
    ):
        with pytest.raises(SignatureError):
            verify_cwt(_resign(key, prot, unprot, payload), pub)
    # Another key.
    with pytest.raises(SignatureError):
        verify_cwt(cwt, ec.generate_private_key(ec.SECP256R1()).public_key())
    # The high-S twin of the signature.
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    s = int.from_bytes(sig[32:], "big")
    twin = sig[:32] + (n - s).to_bytes(32, "big")
    twin_cwt = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, twin]))
    with pytest.raises(SignatureError, match="high S"):
        verify_cwt(twin_cwt, pub)
    assert verify_cwt(twin_cwt, pub, low_s=False) == claims
    # Structure: trailing bytes, detached payload, another tag, not an array of 4.
    for bad in (
        cwt + b"\x00",
        cbor2.dumps(cbor2.CBORTag(18, [protected, {}, None, sig])),
        cbor2.dumps(cbor2.CBORTag(98, [protected, {}, payload, sig])),
        cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload])),
        b"\xff\xff",
        b"",
    ):
        with pytest.raises(EvidenceFormatError):
            verify_cwt(bad, pub)
    # Untagged, and inside the CWT tag 61: the same message, accepted.
    assert verify_cwt(cbor2.dumps([protected, {}, payload, sig]), pub) == claims
    assert verify_cwt(cbor2.dumps(cbor2.CBORTag(61, cbor2.loads(cwt))), pub) == claims


def test_duplicate_keys_in_the_payload_are_refused(key: ec.EllipticCurvePrivateKey) -> None:
    # {265: profile, 265: profile, ...}: a map with a repeated key (hand-built CBOR).
    payload = bytes([0xA2, 0x19, 0x01, 0x09, 0x61, 0x61, 0x19, 0x01, 0x09, 0x61, 0x62])
    with pytest.raises(EvidenceFormatError):
        verify_cwt(_resign(key, cbor2.dumps({1: -7}), {}, payload), key.public_key())


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
def test_time_and_nonce_are_checked(
    fmt: str,
    key: ec.EllipticCurvePrivateKey,
    claims: dict,  # type: ignore[type-arg]
) -> None:
    pub = key.public_key()
    token = sign_ear(claims, key) if fmt == "jwt" else sign_cwt(claims, key)
    verify_token(token, pub, now=NOW + timedelta(minutes=59), nonce=NONCE)
    with pytest.raises(EarTimeError, match="expired"):
        verify_token(token, pub, now=NOW + timedelta(hours=1, minutes=2))
    with pytest.raises(EarTimeError, match="after now"):
        verify_token(token, pub, now=NOW - timedelta(minutes=2))
    with pytest.raises(NonceError):
        verify_token(token, pub, nonce=b"m" * 32)
    # A token without exp has no expiry to check.
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    token = sign_ear(no_exp, key) if fmt == "jwt" else sign_cwt(no_exp, key)
    assert verify_token(token, pub, now=NOW + timedelta(days=30))[1] == no_exp


def test_a_submodule_without_status_is_refused(
    key: ec.EllipticCurvePrivateKey, claims: dict
) -> None:  # type: ignore[type-arg]
    bad = json.loads(json.dumps(claims))
    del bad["submods"]["node-7"]["ear.status"]
    for token in (sign_ear(bad, key), sign_cwt(bad, key)):
        with pytest.raises(EvidenceFormatError, match="ear.status"):
            verify_token(token, key.public_key())


# --- the collateral an appraisal used, for auditors ---------------------------------------------


def test_collateral_names_the_registry_platform_reference_and_ek_roots(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    import hashlib

    from tests.support.appraisal import PLATFORM, make_node, make_registry

    from attest.appraisal.ear import collateral, result_claims
    from attest.manifest import canonicalize

    registry = make_registry(make_node())
    roots = [b"root-b DER", b"root-a DER"]
    found = collateral(registry, PLATFORM, roots)
    assert found["registry"] == {
        "sequence": 5,
        "sha256": hashlib.sha256(registry.raw).hexdigest(),
    }
    ref = registry.snapshot.platforms[PLATFORM]
    assert found["platform-reference"] == {
        "id": PLATFORM,
        "sha256": hashlib.sha256(canonicalize(ref.to_json())).hexdigest(),
    }
    a, b = (
        hashlib.sha256(r).digest() for r in sorted(roots, key=lambda r: hashlib.sha256(r).digest())
    )
    assert found["ek-roots"] == {"count": 2, "sha256": hashlib.sha256(a + b).hexdigest()}
    assert collateral(registry, PLATFORM, list(reversed(roots))) == found  # order-free
    # Another registry (another sequence or other bytes) is another id.
    claims = result_claims(_result(), now=NOW, found=found)  # type: ignore[arg-type]
    sm = claims["submods"]["node-7"]
    assert sm["ear.appraisal-policy-id"] == (
        f"attest/default@1;registry=5@sha256:{found['registry']['sha256']}"
    )
    assert sm["attest.collateral"] == found
    # Both serialisations carry it.
    assert verify_cwt(sign_cwt(claims, key), key.public_key())["submods"]["node-7"] == sm
    assert collateral(None, PLATFORM) == {}
    assert collateral(registry, "no-such-platform") == {"registry": found["registry"]}
    assert (
        result_claims(_result(), now=NOW)["submods"]["node-7"][  # type: ignore[arg-type]
            "ear.appraisal-policy-id"
        ]
        == "attest/default@1"
    )
