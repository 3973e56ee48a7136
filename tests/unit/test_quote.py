"""verify_quote: one named test per check, on quotes signed by real software keys."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest import quote as quote_module
from attest.errors import (
    AttestationTypeError,
    AttestError,
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
from attest.quote import (
    DEFAULT_POLICY,
    QuotePolicy,
    _verify_quote_reference,
    der_signature,
    verify_quote,
)
from attest.tpmstruct import (
    TPM_RH_ENDORSEMENT_QN,
    TPM_ST_ATTEST_CERTIFY,
    Alg,
    ClockInfo,
    Public,
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


def test_a_policy_naming_a_hash_with_no_signature_check_is_refused_not_a_crash(
    fake: FakeTpm,
) -> None:
    """SM3 may be allowed by a policy a program builds, but no signature check here implements
    it: an SM3 signature by an AK with no scheme of its own is a ``KeyPolicyError``."""
    signer = Signer()
    signer.ak = dataclasses.replace(signer.ak, scheme=Alg.NULL, scheme_hash=None)
    values = values_of(fake)
    attest, _ = signer.quote(values)
    ecdsa = Signature(Alg.ECDSA, HashAlg.SM3_256, r=b"\x01" * 32, s=b"\x02" * 32)
    policy = QuotePolicy(signature_hashes=frozenset({HashAlg.SHA256, HashAlg.SM3_256}))
    with pytest.raises(KeyPolicyError, match="sm3_256 is not supported"):
        verify_quote(
            attest, build_signature(ecdsa), ak=signer.ak, nonce=NONCE, pcrs=values, policy=policy
        )


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


# --- the fast path and the reference ------------------------------------------------------
# verify_quote checks a well-formed quote in one pass and sends anything unexpected to the
# reference path (_verify_quote_reference), which decides every error. These tests hold the
# fast path to that: genuine quotes never leave it, and whatever it refuses, it refuses with
# the reference's error type and message.


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except AttestError as exc:
        return (type(exc), str(exc))


def _refused_alike(
    attest: bytes | bytearray,
    sig: bytes | bytearray,
    ak: Public,
    nonce: bytes,
    pcrs: Any,
    *,
    previous: ClockInfo | None = None,
    policy: QuotePolicy = DEFAULT_POLICY,
) -> object:
    """verify_quote's outcome, asserted equal to the reference's: the result, or the error's
    type and message."""
    fast = _outcome(
        lambda: verify_quote(
            attest, sig, ak=ak, nonce=nonce, pcrs=pcrs, previous=previous, policy=policy
        )  # type: ignore[arg-type]
    )
    ref = _outcome(
        lambda: _verify_quote_reference(
            attest,  # type: ignore[arg-type]
            sig,  # type: ignore[arg-type]
            ak,
            nonce,
            pcrs,
            previous,
            policy,
        )
    )
    assert fast == ref
    return fast


@pytest.fixture()
def no_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if verify_quote leaves its fast path."""

    def refuse(*args: object) -> NoReturn:
        raise AssertionError("verify_quote left its fast path")

    monkeypatch.setattr(quote_module, "_verify_quote_reference", refuse)
    monkeypatch.setattr(quote_module, "_check_contents", refuse)


@pytest.mark.parametrize("kind", ["ecc", "rsassa", "pss"])
def test_genuine_quotes_take_the_fast_path(kind: str, fake: FakeTpm, no_reference: None) -> None:
    signer = Signer(kind)
    values = values_of(fake)
    for clock in (CLOCK, ClockInfo(2000, 3, 1, True)):
        attest, sig = signer.quote(values, clock=clock)
        vq = verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=PcrValues(values))
        assert vq.pcrs.values == values and vq.clock == clock
        assert vq.attest == parse_attest(attest)
        assert (vq.signature_alg, vq.signature_hash) == (signer.scheme, HashAlg.SHA256)
    # against the previous quote's clock, and with the values as a plain mapping (copied)
    later = verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values, previous=vq)
    assert later.pcrs.values == values and later.pcrs.values is not values


def test_fast_path_result_is_the_references(fake: FakeTpm) -> None:
    q = fake.quote(SEL, NONCE)
    fast = verify_quote(q.attest, q.signature, ak=fake.ak_public(), nonce=NONCE, pcrs=q.pcrs)
    ref = _verify_quote_reference(
        q.attest, q.signature, fake.ak_public(), NONCE, q.pcrs, None, DEFAULT_POLICY
    )
    assert fast == ref
    assert type(fast.clock) is ClockInfo and type(fast.attest.clock_info) is ClockInfo


def test_fast_path_covers_an_ak_without_a_scheme(fake: FakeTpm, no_reference: None) -> None:
    """An AK whose scheme is NULL accepts any allowed scheme its key type can make."""
    signer = Signer("rsassa")
    signer.ak = dataclasses.replace(signer.ak, scheme=Alg.NULL, scheme_hash=None)
    values = values_of(fake)
    attest, sig = signer.quote(values)
    assert verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values).signature_alg == (
        Alg.RSASSA
    )


def _tampered_cases(
    fake: FakeTpm, signer: Signer, sel: PcrSelection
) -> dict[str, tuple[Any, type[AttestError]]]:
    values = values_of(fake, sel)
    attest, sig = signer.quote(values, sel)
    first = HashAlg.SHA256  # the first bank of each selection below, PCRs 0-3

    def edited(change: Callable[[dict[int, bytes]], object]) -> dict[HashAlg, dict[int, bytes]]:
        out = {alg: dict(v) for alg, v in values.items()}
        change(out[first])
        return out

    relabelled = {alg: dict(v) for alg, v in values.items()}
    relabelled[first] = {i + 4: v for i, v in values[first].items()}
    v1, v2 = values[first][1], values[first][2]
    without_last_bank = {alg: dict(v) for alg, v in list(values.items())[:-1]}
    bad_sig = bytearray(sig)
    bad_sig[-1] ^= 1
    other = Signer("pss" if signer.scheme == Alg.RSASSA else "rsassa")
    other.key = signer.key if signer.scheme != Alg.ECDSA else other.key
    unsafe = signer.quote(values, sel, clock=ClockInfo(10, 3, 1, False))
    not_yes_no = signer.quote(values, sel, clock=ClockInfo(10, 3, 1, 2))  # type: ignore[arg-type]
    return {
        "tampered PCR value": ((attest, sig, NONCE, edited(lambda b: b.update({2: b"\xee" * 32}))),
                               PcrDigestError),
        "wrong nonce": ((attest, sig, b"\x00" * 32, values), NonceError),
        "shorter nonce": ((attest, sig, NONCE[:16], values), NonceError),
        "relabelled selection": ((attest, sig, NONCE, relabelled), PcrSelectionError),
        "value boundaries moved": ((attest, sig, NONCE,
                                   edited(lambda b: b.update({1: v1[:31], 2: v1[31:] + v2}))),
                                   PcrSelectionError),
        "value of 300 bytes": ((attest, sig, NONCE, edited(lambda b: b.update({1: bytes(300)}))),
                               PcrSelectionError),
        "extra PCR": ((attest, sig, NONCE, edited(lambda b: b.update({9: v1}))),
                      PcrSelectionError),
        "PCR swapped for another": ((attest, sig, NONCE, edited(lambda b: b.update({9: b.pop(3)}))),
                                    PcrSelectionError),
        "missing bank": ((attest, sig, NONCE, without_last_bank), PcrSelectionError),
        "extra bank": ((attest, sig, NONCE, {**values, HashAlg.SHA384: {0: bytes(48)}}),
                       PcrSelectionError),
        "truncated attest": ((attest[:-1], sig, NONCE, values), QuoteFormatError),
        "trailing byte": ((attest + b"\x00", sig, NONCE, values), QuoteFormatError),
        "truncated signature": ((attest, sig[:-1], NONCE, values), QuoteFormatError),
        "bad signature": ((attest, bytes(bad_sig), NONCE, values), SignatureError),
        "tampered attest": ((attest[:-1] + bytes([attest[-1] ^ 1]), sig, NONCE, values),
                            SignatureError),
        "scheme not the AK's": ((attest, other.sign(attest), NONCE, values), SignatureError),
        "unsafe clock": ((*unsafe, NONCE, values), ClockError),
        "clockInfo.safe 2": ((*not_yes_no, NONCE, values), QuoteFormatError),
    }  # fmt: skip


@pytest.mark.parametrize("sel", [SEL, PcrSelection.parse("sha256:0-3")], ids=["2 banks", "1 bank"])
@pytest.mark.parametrize("kind", ["ecc", "rsassa"])
def test_fast_path_refuses_with_the_references_errors(
    kind: str, sel: PcrSelection, fake: FakeTpm
) -> None:
    signer = Signer(kind)
    for case, ((attest, sig, nonce, pcrs), error) in _tampered_cases(fake, signer, sel).items():
        outcome = _refused_alike(attest, sig, signer.ak, nonce, pcrs)
        assert isinstance(outcome, tuple) and outcome[0] is error, (case, outcome)


def test_fast_path_refuses_a_clock_going_backwards_as_the_reference(fake: FakeTpm) -> None:
    signer, attest, sig, values = _signed(ClockInfo(5000, 2, 0, True), fake)
    outcome = _refused_alike(
        attest, sig, signer.ak, NONCE, values, previous=ClockInfo(100, 3, 0, True)
    )
    assert isinstance(outcome, tuple) and outcome[0] is ClockError


def test_policy_given_after_the_ak_was_prepared_is_applied(fake: FakeTpm) -> None:
    """The fast path's state is prepared per AK and policy: a stricter policy on the same AK
    object is not answered from the state of the default one."""
    signer = Signer("rsassa")
    values = values_of(fake)
    attest, sig = signer.quote(values)
    verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)
    for policy in (
        QuotePolicy(schemes=frozenset({Alg.RSAPSS})),
        QuotePolicy(signature_hashes=frozenset({HashAlg.SHA384})),
        QuotePolicy(min_rsa_bits=3072),
    ):
        outcome = _refused_alike(attest, sig, signer.ak, NONCE, values, policy=policy)
        assert isinstance(outcome, tuple) and outcome[0] is KeyPolicyError
    verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)


def test_selection_memo_is_bound_to_the_digest_size(fake: FakeTpm) -> None:
    """A selection learned from SHA-256 quotes (its bytes and pcrDigest's size field) does not
    let a SHA-384 AK's quote through with a 32-byte size field before a 48-byte digest."""
    values = values_of(fake)
    signer = Signer("ecc")
    attest, sig = signer.quote(values)
    verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)  # learns the selection
    key = ec.generate_private_key(ec.SECP256R1())
    ak = public_from_key(
        key.public_key(), attributes=AK_ATTRS, scheme=Alg.ECDSA, scheme_hash=HashAlg.SHA384
    )
    digest = digest_of_values(HashAlg.SHA384, values, SEL)
    odd = (
        build_attest(
            qualified_signer=ak.name,
            extra_data=NONCE,
            clock_info=CLOCK,
            firmware_version=7,
            pcr_select=SEL,
            pcr_digest=digest[:32],
        )
        + digest[32:]
    )
    r, s = decode_dss_signature(key.sign(odd, ec.ECDSA(hashes.SHA384())))
    odd_sig = build_signature(
        Signature(Alg.ECDSA, HashAlg.SHA384, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))
    )
    outcome = _refused_alike(odd, odd_sig, ak, NONCE, values)
    assert isinstance(outcome, tuple) and outcome[0] is QuoteFormatError


def test_fast_path_takes_ecdsa_signatures_with_leading_zero_bytes(
    fake: FakeTpm, no_reference: None
) -> None:
    """A TPM pads r and s to the curve's size: a leading zero byte is not part of the DER
    integer (one signature in 128 has one in r or s)."""
    signer = Signer("ecc")
    values = values_of(fake)
    attest, _ = signer.quote(values)
    seen = set()
    for _ in range(5000):
        sig = signer.sign(attest)
        r0, s0 = sig[6], sig[6 + 32 + 2]
        if r0 and s0:
            continue
        seen.add((r0 == 0, s0 == 0))  # (True, True): one signature in 65,536
        verify_quote(attest, sig, ak=signer.ak, nonce=NONCE, pcrs=values)
        if {(True, False), (False, True)} <= seen:
            break
    assert {(True, False), (False, True)} <= seen


@pytest.mark.parametrize("size", [32, 48, 66])
def test_der_frames_match_cryptography(size: int) -> None:
    rng = random.Random(size)
    frames = quote_module._der_frames(size)
    for _ in range(200):
        r = bytes([rng.randrange(1, 256)]) + rng.randbytes(size - 1)
        s = bytes([rng.randrange(1, 256)]) + rng.randbytes(size - 1)
        head, mid = frames[r[0] >> 7 | (s[0] >> 7) << 1]
        want = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        assert head + r + mid + s == want


@given(r=st.binary(max_size=66), s=st.binary(max_size=66))
@settings(max_examples=400, deadline=None)
def test_der_signature_matches_cryptography(r: bytes, s: bytes) -> None:
    want = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    assert der_signature(r, s) == want


_MUTANT_SIGNERS = {kind: Signer(kind) for kind in ("ecc", "rsassa", "pss")}
_MUTANT_VALUES = {
    HashAlg.SHA256: {i: bytes([i + 1]) * 32 for i in range(4)},
    HashAlg.SHA1: {7: bytes([8]) * 20},
}


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "flip", "truncate", "append", "insert", "delete"]))
    if kind == "none" or not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=4))
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    return data[:i] + data[i + 1 :]


@given(data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_path_and_reference_agree_on_mutated_quotes(data: st.DataObject) -> None:
    """Mutated quotes, re-signed or not, with mutated nonces, PCR values, previous clocks and
    policies: verify_quote's outcome is always the reference's."""
    signer = _MUTANT_SIGNERS[data.draw(st.sampled_from(sorted(_MUTANT_SIGNERS)))]
    nonce = data.draw(st.sampled_from([NONCE, NONCE[:20], b""]))
    clock = ClockInfo(1000, 3, 1, data.draw(st.booleans()))
    values = {alg: dict(v) for alg, v in _MUTANT_VALUES.items()}
    sel = SEL
    if data.draw(st.booleans()):  # one bank
        del values[HashAlg.SHA1]
        sel = PcrSelection.parse("sha256:0-3")
    attest, sig = signer.quote(values, sel, nonce=nonce, clock=clock)
    attest = data.draw(_mutation(attest))
    sig = signer.sign(attest) if data.draw(st.booleans()) else data.draw(_mutation(sig))
    given_nonce = data.draw(st.sampled_from([nonce, NONCE[::-1], nonce + b"\x00"]))
    change = data.draw(st.sampled_from(["none", "value", "length", "index", "bank"]))
    if change == "value":
        values[HashAlg.SHA256][1] = b"\x00" * 32
    elif change == "length":
        values[HashAlg.SHA256][2] = b"\x00" * 31
    elif change == "index":
        values[HashAlg.SHA256][9] = values[HashAlg.SHA256].pop(3)
    elif change == "bank":
        values.pop(HashAlg.SHA1, None) or values.pop(HashAlg.SHA256)
    previous = data.draw(
        st.sampled_from([None, ClockInfo(999, 3, 1, True), ClockInfo(5, 4, 0, True)])
    )
    policy = data.draw(st.sampled_from([DEFAULT_POLICY, QuotePolicy(require_safe_clock=False)]))
    pcrs = PcrValues(values) if data.draw(st.booleans()) else values
    _refused_alike(attest, sig, signer.ak, given_nonce, pcrs, previous=previous, policy=policy)
