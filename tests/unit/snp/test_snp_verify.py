"""Report verification on a fake AMD pinned in AMD's place: every mutation is refused by name,
and so is every root that is not the pinned key (real data: test_snp_corpus.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest.errors import SnpCheckError, SnpFormatError
from attest.snp.certs import AmdCertificate, load_certificate
from attest.snp.findings import SnpCheck
from attest.snp.report import Product, Signer, TcbVersion, parse_report
from attest.snp.roots import AMD_ARK_PINS, ArkPins
from attest.snp.verify import SnpVerifier, VerifiedReport, verify_chain, verify_report
from attest.testing.snp import FakeAmd, build_report, make_fake_amd, pem, reissue_ark


def _check(exc: pytest.ExceptionInfo[SnpCheckError]) -> SnpCheck:
    return SnpCheck(exc.value.check)


# --- a fake AMD: the chain and each field, mutated ---------------------------------------------


def _fake_verify(amd: FakeAmd, report: bytes, signer: Signer = Signer.VCEK) -> VerifiedReport:
    parsed = parse_report(report)
    leaf = amd.leaf(signer)[0]
    chain = verify_chain(
        leaf,
        [amd.ask, amd.asvk, amd.ark],
        now=FAKE_NOW,
        pins=amd.pins,
        product=parsed.cpuid_product,
    )
    return verify_report(parsed, chain, now=FAKE_NOW)


@pytest.mark.parametrize("signer", [Signer.VCEK, Signer.VLEK], ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("product", "version"),
    [(p, v) for p in Product for v in (2, 3, 5) if not (v == 2 and p.fmc_in_tcb)],
    ids=lambda x: str(x),
)
def test_fake_reports_verify_under_the_fake_root(
    product: Product, version: int, signer: Signer
) -> None:
    """Every product, report version and signer (Turin reports are version 3 or later)."""
    amd = fake(product)
    vr = _fake_verify(amd, amd.report(signer=signer, version=version), signer)
    assert (vr.product, vr.signer, vr.report.version) == (product, signer, version)


def _verifier(amd: FakeAmd, amd_certs: Sequence[AmdCertificate] = ()) -> SnpVerifier:
    return SnpVerifier(pins=amd.pins, amd_certs=amd_certs)


def test_refuses_a_look_alike_root_with_the_same_names(amd: FakeAmd) -> None:
    """AMD's pins: the fake ARK has AMD's names and another key."""
    report = amd.report()
    v = SnpVerifier()  # AMD_ARK_PINS
    assert amd.ark.subject_cn == f"ARK-{amd.product.value}"
    assert AMD_ARK_PINS.product_of(amd.pins.spki_sha256[amd.product]) is None
    with pytest.raises(SnpCheckError) as exc:  # the fake ASK, names and all, no ARK
        v.verify(report, leaf=amd.vcek.der, intermediates=pem(amd.ask), now=FAKE_NOW)
    assert _check(exc) is SnpCheck.ROOT
    with pytest.raises(SnpCheckError, match="not a pinned AMD ARK") as exc:  # with its ARK
        v.verify(report, leaf=amd.vcek.der, intermediates=amd.cert_chain(), now=FAKE_NOW)
    assert _check(exc) is SnpCheck.ROOT


def test_refuses_a_second_look_alike_under_the_fake_pins() -> None:
    """The same product, the same names, another key: refused by the fake's own pin."""
    pinned, other = fake(Product.MILAN), make_fake_amd(Product.MILAN)
    with pytest.raises(SnpCheckError, match="not a pinned AMD ARK") as exc:
        _verifier(pinned).verify(
            other.report(), leaf=other.vcek.der, intermediates=other.cert_chain(), now=FAKE_NOW
        )
    assert _check(exc) is SnpCheck.ROOT
    with pytest.raises(SnpCheckError) as exc:  # the other ASK under the pinned ARK
        chain = pem(other.ask) + pem(pinned.ark)
        _verifier(pinned).verify(
            other.report(), leaf=other.vcek.der, intermediates=chain, now=FAKE_NOW
        )
    assert _check(exc) is SnpCheck.ROOT


def test_refuses_a_chain_without_the_ark(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError, match="no AMD ARK was presented") as exc:
        _verifier(amd).verify(
            amd.report(), leaf=amd.vcek.der, intermediates=pem(amd.ask), now=FAKE_NOW
        )
    assert _check(exc) is SnpCheck.ROOT


def test_refuses_a_leaf_without_an_ask(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError, match="no ASK or ASVK") as exc:
        _verifier(amd).verify(
            amd.report(), leaf=amd.vcek.der, intermediates=pem(amd.ark), now=FAKE_NOW
        )
    assert _check(exc) is SnpCheck.CHAIN


@pytest.mark.parametrize("signer", [Signer.VCEK, Signer.VLEK], ids=lambda s: s.name)
def test_the_kds_cert_chain_verifies_under_the_pinned_key(amd: FakeAmd, signer: Signer) -> None:
    vr = _verifier(amd).verify(
        amd.report(signer=signer),
        leaf=amd.leaf(signer)[0].der,
        intermediates=amd.cert_chain(signer),
        now=FAKE_NOW,
    )
    assert (vr.product, vr.signer, vr.chain.root.der) == (amd.product, signer, amd.ark.der)


def test_the_ark_may_come_from_the_operators_certificates(amd: FakeAmd) -> None:
    v = _verifier(amd, amd_certs=[amd.ark])
    vr = v.verify(amd.report(), leaf=amd.vcek.der, intermediates=pem(amd.ask), now=FAKE_NOW)
    assert vr.chain.root.der == amd.ark.der
    v = _verifier(amd, amd_certs=[amd.ask, amd.ark, amd.asvk])  # AMD's files, as downloaded
    assert v.verify(amd.report(), leaf=amd.vcek.der, now=FAKE_NOW).product is amd.product


def test_refuses_an_ark_with_the_pinned_key_and_a_broken_self_signature(amd: FakeAmd) -> None:
    der = bytearray(amd.ark.der)
    der[-3] ^= 0x01
    broken = load_certificate(bytes(der))
    with pytest.raises(SnpCheckError, match="not a self-signed") as exc:
        verify_chain(amd.vcek, [amd.ask, broken], now=FAKE_NOW, pins=amd.pins)
    assert _check(exc) is SnpCheck.ROOT


def test_accepts_the_ark_reissued_under_the_pinned_key(amd: FakeAmd) -> None:
    """The key is pinned, not the certificate: AMD may re-issue its root with a new validity."""
    later = reissue_ark(
        amd,
        not_before=dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2060, 1, 1, tzinfo=dt.UTC),
    )
    chain = verify_chain(amd.vcek, [amd.ask, load_certificate(later)], now=FAKE_NOW, pins=amd.pins)
    assert chain.root.der == later != amd.ark.der


def test_refuses_an_ark_not_valid_at_now(amd: FakeAmd) -> None:
    expired = reissue_ark(
        amd,
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(SnpCheckError, match="the ARK") as exc:
        verify_chain(amd.vcek, [amd.ask, load_certificate(expired)], now=FAKE_NOW, pins=amd.pins)
    assert _check(exc) is SnpCheck.VALIDITY


def test_an_ark_valid_at_now_is_preferred_to_an_expired_copy(amd: FakeAmd) -> None:
    expired = load_certificate(
        reissue_ark(
            amd,
            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            not_after=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
        )
    )
    chain = verify_chain(amd.vcek, [amd.ask, expired, amd.ark], now=FAKE_NOW, pins=amd.pins)
    assert chain.root is amd.ark


def test_now_must_be_timezone_aware(amd: FakeAmd) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(amd.vcek, [amd.ask, amd.ark], now=dt.datetime(2024, 6, 1), pins=amd.pins)


def test_pins_for_several_products_keep_each_chain_to_its_own() -> None:
    milan, turin = fake(Product.MILAN), fake(Product.TURIN)
    pins = ArkPins({**milan.pins.spki_sha256, **turin.pins.spki_sha256})
    v = SnpVerifier(pins=pins, amd_certs=[milan.ark, turin.ark])
    for f in (milan, turin):
        vr = v.verify(f.report(), leaf=f.vcek.der, intermediates=pem(f.ask), now=FAKE_NOW)
        assert vr.product is f.product and vr.chain.root.der == f.ark.der
    with pytest.raises(SnpCheckError) as exc:  # a Turin report over Milan's chain
        v.verify(turin.report(), leaf=milan.vcek.der, intermediates=pem(milan.ask), now=FAKE_NOW)
    assert _check(exc) is SnpCheck.PRODUCT


def test_refuses_a_leaf_with_its_signature_changed(amd: FakeAmd) -> None:
    der = bytearray(amd.vcek.der)
    der[-5] ^= 0x01
    with pytest.raises(SnpCheckError) as exc:
        verify_chain(load_certificate(bytes(der)), [amd.ask, amd.ark], now=FAKE_NOW, pins=amd.pins)
    assert _check(exc) is SnpCheck.CHAIN


def test_refuses_a_leaf_under_another_products_ask() -> None:
    milan, genoa = fake(Product.MILAN), fake(Product.GENOA)
    with pytest.raises(SnpCheckError) as exc:
        verify_chain(milan.vcek, [genoa.ask, milan.ark], now=FAKE_NOW, pins=milan.pins)
    assert _check(exc) is SnpCheck.CHAIN
    # The refusal names both sides: the leaf's issuer and what was presented (by full name:
    # a certificate whose CN is empty was shown as '').
    text = str(exc.value)
    assert "the leaf (issuer 'CN=SEV-Milan" in text and "presented ('CN=SEV-Genoa" in text, text


def test_refuses_a_vcek_under_the_asvk_names(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError) as exc:
        verify_chain(amd.vcek, [amd.asvk, amd.ark], now=FAKE_NOW, pins=amd.pins)
    assert _check(exc) is SnpCheck.CHAIN  # the ASVK did not sign it


def test_refuses_reported_tcb_other_than_the_leafs(amd: FakeAmd) -> None:
    t = amd.tcb
    lower = TcbVersion(
        bootloader=t.bootloader, tee=t.tee, snp=t.snp - 1, microcode=t.microcode, fmc=t.fmc
    )
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, amd.report(reported_tcb=lower.encode(amd.product)))
    assert _check(exc) is SnpCheck.TCB


def test_refuses_reserved_tcb_bytes(amd: FakeAmd) -> None:
    raw = bytearray(amd.tcb.encode(amd.product))
    raw[5] = 1
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, amd.report(reported_tcb=bytes(raw)))
    assert _check(exc) is SnpCheck.TCB


def test_refuses_another_chip_id(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, amd.report(chip_id=bytes(range(64))))
    assert _check(exc) is SnpCheck.CHIP_ID


def test_refuses_a_masked_chip_id_under_a_vcek(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, amd.report(mask_chip_key=True))
    assert _check(exc) is SnpCheck.CHIP_ID


def test_turin_chip_id_is_the_8_byte_hwid_zero_padded() -> None:
    turin = fake(Product.TURIN)
    assert turin.chip_id[8:] == bytes(56)
    padded_wrong = turin.chip_id[:8] + b"\1" + bytes(55)
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(turin, turin.report(chip_id=padded_wrong))
    assert _check(exc) is SnpCheck.CHIP_ID


def test_refuses_a_cpuid_naming_another_product() -> None:
    milan = fake(Product.MILAN)
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(milan, milan.report(cpuid=(0x19, 0x11, 0x01)))
    assert _check(exc) is SnpCheck.PRODUCT


def test_refuses_an_unknown_cpuid() -> None:
    milan = fake(Product.MILAN)
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(milan, milan.report(cpuid=(0x1A, 0x50, 0x00)))
    assert _check(exc) is SnpCheck.PRODUCT


def test_refuses_a_version_2_report_from_turin() -> None:
    turin = fake(Product.TURIN)
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(turin, turin.report(version=2))
    assert _check(exc) is SnpCheck.PRODUCT


def test_refuses_signing_key_naming_the_other_kind(amd: FakeAmd) -> None:
    vlek_signed = build_report(
        key=amd.vcek_key, product=amd.product, tcb=amd.tcb, chip_id=amd.chip_id, signer=Signer.VLEK
    )
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, vlek_signed, Signer.VCEK)
    assert _check(exc) is SnpCheck.SIGNER


def test_refuses_an_unsigned_report(amd: FakeAmd) -> None:
    unsigned = build_report(
        key=None, product=amd.product, tcb=amd.tcb, chip_id=amd.chip_id, signer=Signer.NONE
    )
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(amd, unsigned)
    assert _check(exc) is SnpCheck.SIGNER


def test_refuses_before_the_leaf_is_valid(amd: FakeAmd) -> None:
    with pytest.raises(SnpCheckError) as exc:
        verify_chain(
            amd.vcek,
            [amd.ask, amd.ark],
            now=dt.datetime(2023, 12, 31, tzinfo=dt.UTC),
            pins=amd.pins,
        )
    assert _check(exc) is SnpCheck.VALIDITY


@pytest.mark.parametrize("offset", [0x004, 0x050, 0x090, 0x0C0, 0x1A0])
def test_refuses_a_report_with_a_byte_changed(offset: int) -> None:
    turin = fake(Product.TURIN)
    data = bytearray(turin.report(version=5))
    data[offset] ^= 0x01
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(turin, bytes(data))
    assert _check(exc) is SnpCheck.SIGNATURE


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2A0 + 72])
def test_refuses_a_report_with_a_signature_byte_changed(offset: int) -> None:
    genoa = fake(Product.GENOA)
    data = bytearray(genoa.report())
    data[offset] ^= 0x80
    with pytest.raises(SnpCheckError) as exc:
        _fake_verify(genoa, bytes(data))
    assert _check(exc) is SnpCheck.SIGNATURE


def test_refuses_an_expired_vlek_at_the_callers_now(amd: FakeAmd) -> None:
    report = amd.report(signer=Signer.VLEK)
    v = _verifier(amd)
    with pytest.raises(SnpCheckError, match="the leaf") as exc:  # a VLEK lives a year
        v.verify(
            report,
            leaf=amd.vlek.der,
            intermediates=amd.cert_chain(Signer.VLEK),
            now=dt.datetime(2025, 6, 1, tzinfo=dt.UTC),
        )
    assert _check(exc) is SnpCheck.VALIDITY


def test_the_verifier_caches_the_chain() -> None:
    turin = fake(Product.TURIN)
    v, report, chain = _verifier(turin), turin.report(version=5), turin.cert_chain()
    a = v.verify(report, leaf=turin.vcek.der, intermediates=chain, now=FAKE_NOW)
    b = v.verify(report, leaf=turin.vcek.der, intermediates=chain, now=FAKE_NOW)
    assert a.chain is b.chain
    with pytest.raises(SnpCheckError) as exc:  # validity is still checked at each use
        v.verify(
            report,
            leaf=turin.vcek.der,
            intermediates=chain,
            now=dt.datetime(2040, 1, 1, tzinfo=dt.UTC),
        )
    assert _check(exc) is SnpCheck.VALIDITY


_TURIN = fake(Product.TURIN)
_TURIN_REPORT = _TURIN.report(version=5)
_TURIN_CHAIN = _TURIN.cert_chain()
_VERIFIER = _verifier(_TURIN)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 0x4A0 - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_hostile_reports_raise_only_named_errors(changes: list[tuple[int, int]]) -> None:
    data = bytearray(_TURIN_REPORT)
    for offset, value in changes:
        data[offset] = value
    with contextlib.suppress(SnpFormatError, SnpCheckError):
        _VERIFIER.verify(
            bytes(data), leaf=_TURIN.vcek.der, intermediates=_TURIN_CHAIN, now=FAKE_NOW
        )
