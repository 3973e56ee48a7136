"""CoRIM (draft-ietf-rats-corim-11): the registry's reference values exported as a signed CoRIM,
checked against the draft's CDDL; published CoRIMs (Veraison's test vectors) read; imports
bounded and failing closed. The fixtures and their provenance: tests/unit/fixtures/corim/."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cddl_verifier import Validator
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.manifest import NOW, World, release, snp_launch

from attest import cose
from attest.appraisal.ear import jwk_public_key
from attest.errors import CorimFormatError, ExpiredError, SignatureError
from attest.manifest import edit
from attest.manifest.corim import (
    PROFILE,
    SNP_VCEK_CLASS,
    corim_map,
    export_corim,
    key_id,
)
from attest.manifest.corim_parse import (
    MAX_TAGS,
    check_validity,
    parse_comid,
    parse_corim,
    platform_reference,
    snp_measurements,
)
from attest.manifest.model import PlatformReference, ReleaseSnp, VerifiedRegistry
from attest.manifest.verify import verify_root_self_signed, verify_snapshot
from attest.model import HashAlg, PcrValues

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corim"
VERAISON = FIXTURES / "veraison"
PCRS = PcrValues(
    {
        HashAlg.SHA256: {i: hashlib.sha256(b"pcr%d" % i).digest() for i in range(8)},
        HashAlg.SHA1: {0: b"\x01" * 20, 7: b"\x07" * 20},
        HashAlg.SHA384: {0: b"\x38" * 48},
    }
)
BOOT_PCRS = PcrValues({HashAlg.SHA256: {4: b"\x44" * 32, 9: b"\x99" * 32}})
LAUNCHES = (snp_launch("a"), snp_launch("b", measurement=b"\x22" * 48))


@pytest.fixture(scope="module")
def cddl() -> Validator:
    """The draft's CDDL as published (fragments verbatim); unresolved imports are errors."""
    mc = (FIXTURES / "measured-component.cddl").read_text()
    return Validator(
        FIXTURES / "corim-draft-11.cddl",
        modules={"measured-component": mc},
        strict_modules=True,
    )


def _registry(world: World) -> VerifiedRegistry:
    r1 = replace(
        release("1.0.0", 1),
        expected_pcrs={"qemu-ovmf": {"a": BOOT_PCRS, "b": BOOT_PCRS}},
        snp=ReleaseSnp(LAUNCHES),
    )
    ref = PlatformReference("qemu-ovmf", "QEMU OVMF firmware", PCRS)
    snap = world.snapshot(releases=[r1, release("1.1.0", 2)], platforms=[ref])
    root = verify_root_self_signed(world.root_bytes()).root
    return verify_snapshot(root, world.registry_bytes(snap), now=NOW)


def _key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def _valid(v: Validator, data: bytes | object, rule: str) -> list[str]:
    result = v.validate(data, root_type=rule)
    return [f"{d.path_text}: {d.message}"[:300] for d in result.diagnostics]


# --- export, and what it reads back as ---------------------------------------------------------


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["ES256", "ES384"])
def test_export_import_round_trip(world: World, curve: ec.EllipticCurve) -> None:
    registry = _registry(world)
    key = _key(curve)
    data = export_corim(registry, key, signer="attest tests", now=NOW)
    header = cbor2.loads(cbor2.loads(data).value[0])
    assert header[1] == (-7 if isinstance(curve, ec.SECP256R1) else -35)
    assert header[3] == "application/rim+cbor" and header[4] == key_id(key)
    expires = int(registry.snapshot.expires.timestamp())
    assert header[15] == {
        1: "attest tests",
        2: "attest-registry-1",
        4: expires,
        5: int(NOW.timestamp()),
    }
    corim = parse_corim(data, public_key=key.public_key())
    assert corim.signature_checked and corim.signer == "attest tests"
    assert corim.corim_id == "attest-registry-1" and corim.profile == PROFILE
    assert corim.not_before == NOW and corim.not_after == registry.snapshot.expires
    by = {(v.tag_id, v.environment.model, v.mkey): v for v in corim.values}
    rel = registry.snapshot.releases["1.0.0"]
    art = by[("attest:release:1.0.0", "os-image", "artifact")]
    assert art.digests == ((1, rel.artifact_sha256),) and art.version == "1.0.0"
    assert art.svn == 1
    assert by[("attest:release:1.0.0", "os-image", "dm-verity")].digests == (
        (1, rel.verity.root_hash),
    )
    boot = by[("attest:release:1.0.0", "qemu-ovmf", "tpm-pcrs:b")]
    assert boot.registers == {4: ((1, b"\x44" * 32),), 9: ((1, b"\x99" * 32),)}
    # The SNP launches, as the AMD SEV-SNP profile writes them: one triple each.
    assert [d for _, d in snp_measurements(corim)] == [x.measurement for x in LAUNCHES]
    # The platform reference reads back as the same PCRs, sha-1 as text, sha-384 as 7.
    plat = by[("attest:platform:qemu-ovmf", "qemu-ovmf", "tpm-pcrs")]
    assert plat.registers[0] == (
        ("sha-1", b"\x01" * 20),
        (1, PCRS.get(HashAlg.SHA256, 0)),
        (7, b"\x38" * 48),
    )
    got = platform_reference(corim, platform_id="ovmf-2", select="attest:platform:qemu-ovmf")
    assert got.reference.pcrs == PCRS and got.left_out == ()
    assert got.reference.platform_id == "ovmf-2" and not got.reference.example
    # The same registry and time export the same payload (deterministic CBOR).
    again = export_corim(registry, key, signer="attest tests", now=NOW)
    assert cbor2.loads(again).value[2] == cbor2.loads(data).value[2]


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["ES256", "ES384"])
def test_pycose_verifies_our_signed_corim(world: World, curve: ec.EllipticCurve) -> None:
    """An independent COSE implementation as the oracle of the signature."""
    from pycose.keys import EC2Key
    from pycose.keys.curves import P256, P384
    from pycose.messages import Sign1Message

    key = _key(curve)
    data = export_corim(_registry(world), key, signer="attest", now=NOW)
    size = key.curve.key_size // 8
    nums = key.public_key().public_numbers()
    x, y = nums.x.to_bytes(size, "big"), nums.y.to_bytes(size, "big")
    crv = P256 if isinstance(curve, ec.SECP256R1) else P384
    protected, unprotected, payload, sig = cbor2.loads(data).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, sig], True)
    msg.key = EC2Key(crv=crv, x=x, y=y)
    assert msg.verify_signature()
    other = _key(curve).public_key().public_numbers()
    msg.key = EC2Key(crv=crv, x=other.x.to_bytes(size, "big"), y=other.y.to_bytes(size, "big"))
    assert not msg.verify_signature()


def test_export_matches_the_drafts_cddl(world: World, cddl: Validator) -> None:
    data = export_corim(_registry(world), _key(), signer="attest", now=NOW)
    assert _valid(cddl, data, "corim") == []
    msg = cbor2.loads(data).value
    # signed-corim's payload is "bstr .cbor tagged-unsigned-corim-map / hash-envelope-digest",
    # and any bstr is a hash-envelope digest: the payload is checked on its own too.
    assert _valid(cddl, msg[2], "tagged-unsigned-corim-map") == []
    assert _valid(cddl, msg[0], "protected-corim-header-map") == []
    assert _valid(cddl, cbor2.loads(msg[0])[8], "corim-meta-map") == []
    tags = cbor2.loads(msg[2]).value[1]
    assert len(tags) == 3  # two releases, one platform reference
    for tag in tags:
        assert tag.tag == 506 and _valid(cddl, tag.value, "concise-mid-tag") == []
    # The validator bites: a PCR value as text, an empty measurement, a missing tag id.
    comid = cbor2.loads(tags[2].value)
    comid[4][0][0][1][0][1][14][0][0][1] = "not bytes"
    assert _valid(cddl, cbor2.dumps(comid), "concise-mid-tag")
    comid[4][0][0][1][0][1] = {}
    assert _valid(cddl, cbor2.dumps(comid), "concise-mid-tag")
    del comid[1]
    assert _valid(cddl, cbor2.dumps(comid), "concise-mid-tag")


def test_export_of_an_empty_or_expired_registry_is_refused(world: World) -> None:
    root = verify_root_self_signed(world.root_bytes()).root
    empty = world.snapshot(releases=[release("1.0.0", 1)])
    registry = verify_snapshot(root, world.registry_bytes(empty), now=NOW)
    assert len(corim_map(registry, signer="a", now=NOW)[1]) == 1
    # A revoked release is no reference value: left out, and with nothing left, refused.
    revoked = edit.revoke(empty, "1.0.0", reason="CVE", at=NOW)
    gone = verify_snapshot(root, world.registry_bytes(revoked), now=NOW)
    with pytest.raises(ValueError, match="no unrevoked release"):
        corim_map(gone, signer="a", now=NOW)
    both = verify_snapshot(
        root, world.registry_bytes(edit.bless(revoked, release("1.1.0", 2))), now=NOW
    )
    (tag,) = corim_map(both, signer="a", now=NOW)[1]
    assert cbor2.loads(tag.value)[1][0] == "attest:release:1.1.0"
    with pytest.raises(ValueError, match="expired"):
        export_corim(registry, _key(), signer="a", now=datetime(2037, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="P-256"):
        export_corim(registry, _key(ec.SECP521R1()), signer="a", now=NOW)


# --- tampering ---------------------------------------------------------------------------------


def _resign(key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    sig = cose.ecdsa_sign(key, cose.sig_structure(protected, payload), cose.ES256)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))


def registry_expiry(payload: bytes) -> datetime:
    """The rim-validity not-after of a CoRIM payload."""
    return datetime.fromtimestamp(cbor2.loads(payload).value[4][1].timestamp(), UTC)


def test_tampered_corims_are_refused(world: World) -> None:
    key = _key()
    data = export_corim(_registry(world), key, signer="attest", now=NOW)
    protected, _, payload, sig = cbor2.loads(data).value
    pub = key.public_key()
    # A reference value changed after signing (release 1.0.0's artifact digest, last bit).
    art = release("1.0.0", 1).artifact_sha256
    assert payload.count(art) == 1
    changed = payload.replace(art, art[:-1] + bytes([art[-1] ^ 1]))
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, changed, sig]))
    with pytest.raises(SignatureError, match="does not verify"):
        parse_corim(forged, public_key=pub)
    assert parse_corim(forged).signature_checked is False  # no key: read, and said so
    # The signature's last byte; another key; the protected header changed under the signature.
    bad_sig = sig[:-1] + bytes([sig[-1] ^ 1])
    with pytest.raises(SignatureError):
        parse_corim(
            cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, bad_sig])), public_key=pub
        )
    with pytest.raises(SignatureError):
        parse_corim(data, public_key=_key().public_key())
    header = cbor2.loads(protected)
    header[4] = b"another kid"
    with pytest.raises(SignatureError):
        parse_corim(
            cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(header), {}, payload, sig])),
            public_key=pub,
        )
    # Correctly signed, but naming no allowed algorithm, or a critical parameter.
    for alg, extra in ((-8, {}), (5, {}), (-7, {2: [99]})):
        h = dict(cbor2.loads(protected)) | {1: alg} | extra
        with pytest.raises(SignatureError):
            parse_corim(_resign(key, cbor2.dumps(h), payload), public_key=pub)
    # CWT-Claims and corim-meta naming two signers (the draft: they must say the same).
    h = dict(cbor2.loads(protected)) | {15: {1: "someone else"}}
    with pytest.raises(CorimFormatError, match="differ"):
        parse_corim(_resign(key, cbor2.dumps(h), payload), public_key=pub)
    # CWT-Claims alone is enough; its nbf/exp bind with the CoRIM's own validity.
    h = {k: v for k, v in cbor2.loads(protected).items() if k != 8} | {15: {1: "x", 4: 1 << 32}}
    alone = parse_corim(_resign(key, cbor2.dumps(h), payload), public_key=pub)
    assert alone.signer == "x" and alone.not_after == registry_expiry(payload)
    # An unsigned CoRIM when a key was given.
    with pytest.raises(CorimFormatError, match="not signed"):
        parse_corim(payload, public_key=pub)


# --- published CoRIMs ---------------------------------------------------------------------------


def test_veraisons_signed_corim_verifies_with_its_published_key() -> None:
    data = (VERAISON / "signed-good-corim.cbor").read_bytes()
    pub = jwk_public_key(json.loads((VERAISON / "ec-p256.pub.jwk").read_text()))
    corim = parse_corim(data, public_key=pub)
    assert corim.signature_checked and corim.kid == b"1"
    assert corim.signer == "ACME Ltd signing key" and corim.corim_id == "test corim id"
    assert corim.not_before == datetime(2021, 12, 31, tzinfo=UTC)
    assert corim.not_after == datetime(2025, 12, 31, tzinfo=UTC)
    assert len(corim.values) == 3
    assert {v.mkey for v in corim.values} == {"uuid:31fb5abf-023e-4992-aa4e-95f9c1503bfa"}
    assert all(v.environment.vendor == "ACME" for v in corim.values)
    assert all(len(v.digests) == 1 and v.digests[0][0] == 1 for v in corim.values)
    check_validity(corim, now=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ExpiredError, match="expired"):
        check_validity(corim, now=NOW.replace(year=2026))
    # One byte of its payload changed: refused.
    tampered = bytearray(data)
    tampered[-80] ^= 1
    with pytest.raises((SignatureError, CorimFormatError)):
        parse_corim(bytes(tampered), public_key=pub)


@pytest.mark.parametrize(
    "name",
    [
        "signed-good-corim.cbor",
        "signed-example-corim.cbor",
        "unsigned-good-corim.cbor",
        "corim-1.cbor",
        "corim-firmware-cd.cbor",
        "psa-valid.cbor",
    ],
)
def test_veraisons_published_corims_decode_and_match_the_cddl(name: str, cddl: Validator) -> None:
    data = (VERAISON / name).read_bytes()
    corim = parse_corim(data)
    assert corim.values and corim.signature_checked is False
    assert _valid(cddl, data, "corim") == []


def test_published_examples_facts() -> None:
    c1 = parse_corim((VERAISON / "corim-1.cbor").read_bytes())
    assert c1.corim_id.startswith("uuid:") and len(c1.values) == 1
    assert c1.values[0].version == "1.0.0" and c1.values[0].environment.layer == 1
    fw = parse_corim((VERAISON / "corim-firmware-cd.cbor").read_bytes())
    assert [v.environment.model for v in fw.values] == ["fwY_n5x", "fwX_n5x"]
    assert [v.svn for v in fw.values] == [1, 1]
    assert any("triples 1" in s for s in fw.skipped)  # its endorsed triples: counted, not read
    # The draft's integrity-registers example: register 0 and "my-ir", sha-256 and "my-alg-id".
    (ir,) = parse_comid((VERAISON / "comid-integrity-registers.cbor").read_bytes())
    assert set(ir.registers) == {0, "my-ir"}
    assert [a for a, _ in ir.registers[0]] == [1, "my-alg-id"]


def test_import_of_the_drafts_integrity_register_example() -> None:
    """A CoRIM around the draft's CoMID: PCR 0's sha-256 value is taken, the rest listed."""
    comid = (VERAISON / "comid-integrity-registers.cbor").read_bytes()
    wrapped = cbor2.dumps(cbor2.CBORTag(501, {0: "ir", 1: [cbor2.CBORTag(506, comid)]}))
    got = platform_reference(parse_corim(wrapped), platform_id="acme-rr")
    assert got.reference.pcrs == PcrValues(
        {
            HashAlg.SHA256: {
                0: bytes.fromhex("44aa336af4cb14a879432e53dd6571c7fa9bccafb75f488259262d6ea3a4d91b")
            }
        }
    )
    assert got.left_out == (
        "PCR 0: digest algorithm 'my-alg-id' is no TPM bank",
        "register 'my-ir': not a platform firmware PCR (0-7)",
    )


# --- hostile or unusable input -----------------------------------------------------------------


def _corim(*tags: object, **extra: object) -> bytes:
    return cbor2.dumps(
        cbor2.CBORTag(501, {0: "x", 1: list(tags)} | {int(k[1:]): v for k, v in extra.items()})
    )


def _comid(*triples: object) -> cbor2.CBORTag:
    return cbor2.CBORTag(506, cbor2.dumps({1: {0: "t"}, 4: {0: list(triples)}}))


def _pcr_triple(registers: dict[object, object], model: str = "m") -> list[object]:
    return [{0: {1: "v", 2: model}}, [{0: "pcrs", 1: {14: registers}}]]


def test_import_refuses_what_it_cannot_use() -> None:
    no_pcrs = parse_corim((VERAISON / "unsigned-good-corim.cbor").read_bytes())
    with pytest.raises(CorimFormatError, match="no reference value with TPM PCRs"):
        platform_reference(no_pcrs, platform_id="p")
    two = parse_corim(
        _corim(
            _comid(
                _pcr_triple({0: [[1, b"\x00" * 32]]}, "a"),
                _pcr_triple({1: [[1, b"\x01" * 32]]}, "b"),
            )
        )
    )
    with pytest.raises(CorimFormatError, match="2 reference values carry PCRs"):
        platform_reference(two, platform_id="p")
    assert platform_reference(two, platform_id="p", select="model=b").reference.pcrs.values == {
        HashAlg.SHA256: {1: b"\x01" * 32}
    }
    for registers, why in (
        ({0: [[1, b"\x00" * 32], [1, b"\x01" * 32]]}, "two sha256 values"),
        ({0: [[1, b"\x00" * 31]]}, "31 bytes"),
        ({9: [[1, b"\x00" * 32]]}, "no PCR 0-7"),
        ({0: [["md5", b"\x00" * 16]]}, "no PCR 0-7"),
    ):
        with pytest.raises(CorimFormatError, match=why):
            platform_reference(parse_corim(_corim(_comid(_pcr_triple(registers)))), platform_id="p")
    with pytest.raises(ExpiredError):
        check_validity(
            parse_corim(
                _corim(_comid(_pcr_triple({0: [[1, b"\x00" * 32]]})), _4={1: cbor2.CBORTag(1, 0)})
            ),
            now=NOW,
        )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not well-formed"),
        (cbor2.dumps({0: "x"}), "not a CoRIM"),
        (_corim(), "tags is empty"),
        (_corim(*[_comid(_pcr_triple({0: [[1, b"\x00" * 32]]}))] * (MAX_TAGS + 1)), "more than"),
        (_corim(cbor2.CBORTag(999, b"")), "CBOR tag 999"),
        (_corim(cbor2.CBORTag(506, b"\xa0\xa0")), "bytes after"),
        (_corim(cbor2.CBORTag(506, cbor2.dumps({1: {0: "t"}}))), "no triples"),
        (_corim(_comid([{}, []])), "environment is empty"),
        (_corim(_comid([{0: {1: 5}}, [{1: {2: [[1, b""]]}}]])), "vendor is not text"),
        (_corim(_comid(_pcr_triple({0: [[1, "text"]]}))), "not a byte string"),
        (_corim(_comid(_pcr_triple({-1: [[1, b"\x00" * 32]]}))), "not an unsigned integer"),
        (_corim(_comid(_pcr_triple({0: []}))), "is empty"),
        (b"\xd9\x01\xf5" + b"\x81" * 40 + b"\x80", "not well-formed"),  # 40 levels deep
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, None, b""])), "not byte strings"),
        (cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {}, b"\xa0", b""])), "content type"),
    ],
)
def test_hostile_corims_raise_the_documented_error(data: bytes, why: str) -> None:
    with pytest.raises(CorimFormatError, match=why):
        parse_corim(data)


def test_snp_measurements_follow_the_amd_profile(world: World) -> None:
    corim = parse_corim(export_corim(_registry(world), _key(), signer="a", now=NOW))
    found = snp_measurements(corim)
    assert {v.environment.class_id for v, _ in found} == {
        "uuid:" + str(__import__("uuid").UUID(bytes=SNP_VCEK_CLASS))
    }
    assert {v.mkey for v, _ in found} == {0}
