"""verify_quote: one named test per check, on quotes signed by real software keys."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attest.errors import (
    AttestationTypeError,
    ClockError,
    KeyPolicyError,
    NonceError,
    PcrDigestError,
    PcrSelectionError,
    QuoteFormatError,
    SignatureError,
)
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.tpm.fake import AK_ATTRS, FakeTpm
from attest.quote import QuotePolicy, verify_quote
from attest.tpmstruct import (
    TPM_RH_ENDORSEMENT_QN,
    TPM_ST_ATTEST_CERTIFY,
    Alg,
    ClockInfo,
    Signature,
    build_attest,
    build_signature,
    digest_of_values,
    parse_attest,
    public_from_key,
)

NONCE = bytes.fromhex("5a" * 32)
SEL = PcrSelection.parse("sha256:0,1,2,3+sha1:7")
CLOCK = ClockInfo(1000, 3, 1, True)


@pytest.fixture()
def fake() -> FakeTpm:
    tpm = FakeTpm()
    for i in range(8):
        tpm.extend(i, {HashAlg.SHA256: bytes([i + 1]) * 32, HashAlg.SHA1: bytes([i + 1]) * 20})
    return tpm


def values_of(tpm: FakeTpm, sel: PcrSelection = SEL) -> dict[HashAlg, dict[int, bytes]]:
    return {alg: dict(v) for alg, v in tpm.read_pcrs(sel).values.items()}


class Signer:
    """Signs hand-built TPMS_ATTEST structures with a software AK."""

    def __init__(self, kind: str = "ecc") -> None:
        if kind == "ecc":
            self.key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(
                ec.SECP256R1()
            )
            self.scheme = Alg.ECDSA
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.scheme = Alg.RSAPSS if kind == "pss" else Alg.RSASSA
        self.ak = public_from_key(
            self.key.public_key(),
            attributes=AK_ATTRS,
            scheme=self.scheme,
            scheme_hash=HashAlg.SHA256,
        )

    def sign(self, message: bytes, h: HashAlg = HashAlg.SHA256) -> bytes:
        halg = {HashAlg.SHA256: hashes.SHA256(), HashAlg.SHA1: hashes.SHA1()}[h]
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(halg)))
            return build_signature(
                Signature(Alg.ECDSA, h, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
            )
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if self.scheme == Alg.RSASSA
            else padding.PSS(mgf=padding.MGF1(halg), salt_length=padding.PSS.DIGEST_LENGTH)
        )
        return build_signature(Signature(self.scheme, h, sig=self.key.sign(message, pad, halg)))

    def quote(
        self,
        values: dict[HashAlg, dict[int, bytes]],
        sel: PcrSelection = SEL,
        *,
        nonce: bytes = NONCE,
        clock: ClockInfo = CLOCK,
        **overrides: object,
    ) -> tuple[bytes, bytes]:
        fields: dict[str, object] = dict(
            qualified_signer=self.ak.name,
            extra_data=nonce,
            clock_info=clock,
            firmware_version=7,
            pcr_select=sel,
            pcr_digest=digest_of_values(HashAlg.SHA256, values, sel),
        )
        fields.update(overrides)
        attest = build_attest(**fields)  # type: ignore[arg-type]
        return attest, self.sign(attest)


# --- the happy paths -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecc", "rsassa", "pss"])
def test_accepts_genuine_quote_for_each_scheme(kind: str, fake: FakeTpm) -> None:
    signer = Signer(kind)
    values = values_of(fake)
    attest, sig = signer.quote(values)
    vq = verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)
    assert vq.pcrs.values == values
    assert vq.selection == SEL
    assert vq.nonce == NONCE
    assert vq.clock == ClockInfo(1000, 3, 1, True)
    assert vq.firmware_version == 7
    assert vq.qualified_signer == signer.ak.name


def test_accepts_fake_tpm_quote_and_exposes_signer(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    vq = verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)
    assert vq.qualified_signer == fake.ak_public().qualified_name(TPM_RH_ENDORSEMENT_QN)
    assert vq.firmware_version == fake.firmware_version


# --- signature ----------------------------------------------------------------------------


def test_rejects_signature_by_another_key(fake: FakeTpm) -> None:
    values = values_of(fake)
    attest, sig = Signer().quote(values)
    with pytest.raises(SignatureError):
        verify_quote(attest, sig, ak=Signer().ak, nonce=NONCE, pcrs=values)


def test_rejects_tampered_message(fake: FakeTpm) -> None:
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values)
    tampered = bytearray(attest)
    tampered[20] ^= 1  # inside extraData
    with pytest.raises(SignatureError):
        verify_quote(bytes(tampered), sig, ak=signer.ak, nonce=NONCE, pcrs=values)


def test_rejects_scheme_other_than_the_aks(fake: FakeTpm) -> None:
    signer = Signer("rsassa")
    values = values_of(fake)
    attest, _ = signer.quote(values)
    pss = Signer("pss")
    pss.key = signer.key  # same key, other padding: a restricted key never signs that way
    with pytest.raises(SignatureError, match="scheme"):
        verify_quote(attest, pss.sign(attest), ak=signer.ak, nonce=NONCE, pcrs=values)


def test_rejects_sha1_signature_by_default(fake: FakeTpm) -> None:
    signer = Signer()
    signer.ak = dataclasses.replace(signer.ak, scheme_hash=HashAlg.SHA1)
    values = values_of(fake)
    attest, _ = signer.quote(values)
    sig = signer.sign(attest, HashAlg.SHA1)
    with pytest.raises(KeyPolicyError, match="sha1"):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)


def test_rejects_small_rsa_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ak = public_from_key(
        key.public_key(), attributes=AK_ATTRS, scheme=Alg.RSASSA, scheme_hash=HashAlg.SHA256
    )
    values = {HashAlg.SHA256: {0: bytes(32)}}
    sel = PcrSelection.parse("sha256:0")
    attest = build_attest(
        qualified_signer=ak.name,
        extra_data=NONCE,
        clock_info=ClockInfo(1, 1, 0, True),
        firmware_version=0,
        pcr_select=sel,
        pcr_digest=digest_of_values(HashAlg.SHA256, values, sel),
    )
    raw = key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    sig = build_signature(Signature(Alg.RSASSA, HashAlg.SHA256, sig=raw))
    with pytest.raises(KeyPolicyError, match="1024"):
        verify_quote(attest, sig, ak=ak, nonce=NONCE, pcrs=values)


# --- magic and type -----------------------------------------------------------------------


def test_rejects_message_not_generated_by_tpm(fake: FakeTpm) -> None:
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values, magic=0x12345678)
    with pytest.raises(AttestationTypeError, match="TPM_GENERATED"):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)


def test_rejects_attestation_that_is_not_a_quote(fake: FakeTpm) -> None:
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values, st=TPM_ST_ATTEST_CERTIFY)
    with pytest.raises(AttestationTypeError, match="QUOTE"):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)


# --- nonce --------------------------------------------------------------------------------


def test_rejects_wrong_nonce(fake: FakeTpm) -> None:
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values)
    with pytest.raises(NonceError):
        verify_quote(attest, sig, ak=signer.ak, nonce=b"\x00" * 32, pcrs=values)


def test_rejects_nonce_alternative_encoding(fake: FakeTpm) -> None:
    """The qualifying data must be exactly the expected bytes: not a prefix, not padded."""
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values, nonce=NONCE + b"\x00")
    with pytest.raises(NonceError):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)
    attest, sig = signer.quote(values, nonce=NONCE[:16])
    with pytest.raises(NonceError):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)


# --- PCR selection ------------------------------------------------------------------------


def test_rejects_relabelled_pcr_selection(fake: FakeTpm) -> None:
    """A genuine quote over sha256 PCRs 0-3 must not vouch for the same values labelled 4-7:
    the digest over the concatenated values matches, which is what keylime and
    tpm2_checkquote check."""
    q = fake.quote(SEL, NONCE)
    relabelled = {
        HashAlg.SHA256: {i + 4: v for i, v in q.pcrs.values[HashAlg.SHA256].items()},
        HashAlg.SHA1: dict(q.pcrs.values[HashAlg.SHA1]),
    }
    # Same values in the same order: the digest alone would not notice.
    assert (
        digest_of_values(HashAlg.SHA256, relabelled, PcrSelection.parse("sha256:4,5,6,7+sha1:7"))
        == parse_attest(q.attest).pcr_digest
    )
    with pytest.raises(PcrSelectionError, match="PCRs"):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=relabelled)


def test_rejects_missing_pcr_value(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {alg: dict(v) for alg, v in q.pcrs.values.items()}
    del values[HashAlg.SHA256][3]
    with pytest.raises(PcrSelectionError):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


def test_rejects_extra_pcr_value(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {alg: dict(v) for alg, v in q.pcrs.values.items()}
    values[HashAlg.SHA256][9] = bytes(32)
    with pytest.raises(PcrSelectionError):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


def test_rejects_values_for_another_bank(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {HashAlg.SHA256: dict(q.pcrs.values[HashAlg.SHA256]), HashAlg.SHA384: {7: bytes(48)}}
    with pytest.raises(PcrSelectionError, match="banks"):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


def test_rejects_value_of_wrong_length(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {alg: dict(v) for alg, v in q.pcrs.values.items()}
    values[HashAlg.SHA1][7] = bytes(32)
    with pytest.raises(PcrSelectionError, match="bytes"):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


# --- PCR digest ---------------------------------------------------------------------------


def test_rejects_changed_pcr_value(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {alg: dict(v) for alg, v in q.pcrs.values.items()}
    values[HashAlg.SHA256][2] = b"\xee" * 32
    with pytest.raises(PcrDigestError):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


def test_rejects_reordered_pcr_values(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    values = {alg: dict(v) for alg, v in q.pcrs.values.items()}
    s = values[HashAlg.SHA256]
    s[0], s[1] = s[1], s[0]
    assert s[0] != s[1]
    with pytest.raises(PcrDigestError):
        verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=values)


# --- clock and counters -------------------------------------------------------------------


def _signed(clock: ClockInfo, fake: FakeTpm) -> tuple[Signer, bytes, bytes, dict]:  # type: ignore[type-arg]
    signer = Signer()
    values = values_of(fake)
    attest, sig = signer.quote(values, clock=clock)
    return signer, attest, sig, values


def test_rejects_unsafe_clock(fake: FakeTpm) -> None:
    signer, attest, sig, values = _signed(ClockInfo(10, 1, 0, False), fake)
    with pytest.raises(ClockError, match="safe"):
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)
    relaxed = QuotePolicy(require_safe_clock=False)
    verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values, policy=relaxed)


def test_rejects_reset_count_going_backwards(fake: FakeTpm) -> None:
    signer, attest, sig, values = _signed(ClockInfo(5000, 2, 0, True), fake)
    with pytest.raises(ClockError, match="resetCount"):
        verify_quote(
            attest,
            sig,
            ak=signer.ak,
            nonce=NONCE,
            pcrs=values,
            previous=ClockInfo(1000, 3, 0, True),
        )


def test_rejects_restart_count_going_backwards_without_reset(fake: FakeTpm) -> None:
    signer, attest, sig, values = _signed(ClockInfo(5000, 3, 1, True), fake)
    with pytest.raises(ClockError, match="restartCount"):
        verify_quote(
            attest,
            sig,
            ak=signer.ak,
            nonce=NONCE,
            pcrs=values,
            previous=ClockInfo(1000, 3, 2, True),
        )


def test_accepts_restart_count_back_to_zero_after_reset(fake: FakeTpm) -> None:
    """TPM Reset increments resetCount and sets restartCount to 0 (Part 1 §36.6)."""
    signer, attest, sig, values = _signed(ClockInfo(500, 4, 0, True), fake)
    vq = verify_quote(
        attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values, previous=ClockInfo(90000, 3, 5, True)
    )
    assert vq.clock.reset_count == 4


def test_rejects_clock_going_backwards_within_reset_epoch(fake: FakeTpm) -> None:
    signer, attest, sig, values = _signed(ClockInfo(999, 3, 1, True), fake)
    with pytest.raises(ClockError, match="clock went backwards"):
        verify_quote(
            attest,
            sig,
            ak=signer.ak,
            nonce=NONCE,
            pcrs=values,
            previous=ClockInfo(1000, 3, 1, True),
        )


def test_previous_may_be_a_verified_quote(fake: FakeTpm) -> None:
    first = fake.quote(SEL, NONCE)
    v1 = verify_quote(
        first.attest, first.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=first.pcrs
    )
    fake.reset()
    second = fake.quote(SEL, NONCE)
    v2 = verify_quote(
        second.attest,
        second.signature,
        ak=fake.ak_public(),
        nonce=NONCE,
        pcrs=second.pcrs,
        previous=v1,
    )
    assert v2.clock.reset_count == v1.clock.reset_count + 1
    with pytest.raises(ClockError):
        verify_quote(
            first.attest,
            first.signature,
            ak=fake.ak_public(),
            nonce=NONCE,
            pcrs=first.pcrs,
            previous=v2,
        )


# --- format ------------------------------------------------------------------------------


def test_rejects_truncated_attest(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    with pytest.raises(QuoteFormatError):
        verify_quote(q.attest[:-1], q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)


def test_rejects_trailing_bytes_after_attest(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    with pytest.raises(QuoteFormatError, match="trailing"):
        verify_quote(q.attest + b"\x00", q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)


def test_rejects_size_prefixed_attest(fake: FakeTpm) -> None:
    """Only the bare TPMS_ATTEST is accepted: one encoding is signed, one is verified."""
    q = fake.quote(SEL, NONCE)
    sized = len(q.attest).to_bytes(2, "big") + q.attest
    with pytest.raises(QuoteFormatError):
        verify_quote(sized, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)


def test_pcr_values_object_and_mapping_are_equivalent(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    a = verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)
    b = verify_quote(
        q.attest,
        q.signature,
        ak=fake.ak_public(),
        nonce=NONCE,
        pcrs=PcrValues(dict(q.pcrs.values)).values,
    )
    assert a.pcrs == b.pcrs
