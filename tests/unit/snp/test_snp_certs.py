"""AMD certificates on a fake AMD: serial number 0, DER INTEGER SPLs, the KDS extensions, the
pinned fingerprints, hostile DER (AMD's own certificates: test_snp_corpus.py)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.ekpki import odd_name_certificate, odd_name_crl
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest.errors import SnpCheckError, SnpFormatError
from attest.snp.certs import (
    kds_extensions,
    load_certificate,
    load_certificates,
    load_crl,
    signed_by,
    spki_sha256,
)
from attest.snp.report import Product
from attest.snp.roots import AMD_ARK_PINS, PINNED
from attest.snp.verify import verify_chain
from attest.testing.snp import FakeAmd, pem


def test_vcek_serial_zero_loads_without_a_warning_and_keeps_its_bytes(amd: FakeAmd) -> None:
    der = amd.vcek.der
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cryptography's serial-0 deprecation would raise here
        cert = load_certificate(der)
    assert cert.serial == 0
    assert cert.der == der and cert.tbs in der
    assert cert.x509.serial_number == 1  # the parsed view only
    assert signed_by(cert, amd.ask)  # verified over the TBS as received, serial 0


def test_a_cn_over_64_characters_loads_without_a_warning() -> None:
    """A non-AMD certificate given as the VCEK (here Google's vTPM EK, whose issuer's CN is
    79 characters): refused later by the chain checks, never two lines of UserWarning."""
    from pathlib import Path

    leaf = Path(__file__).resolve().parents[2] / "data/ekcerts/leaves/google-shielded-vm-ecc-ek.pem"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = load_certificates(leaf.read_bytes())[0]
    assert len(cert.x509.issuer.rfc4514_string()) > 64


def test_plain_cryptography_warns_on_the_same_certificate() -> None:
    with pytest.warns(Warning, match="serial number"):
        x509.load_der_x509_certificate(fake(Product.MILAN).vcek.der)


def test_policy_builder_refuses_the_chain_that_link_by_link_accepts() -> None:
    """Why attest verifies each link itself: cryptography's X.509 verifier rejects a VCEK
    shaped like AMD's (serial 0, no authorityKeyIdentifier)."""
    turin = fake(Product.TURIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        leaf = x509.load_der_x509_certificate(turin.vcek.der)
    store = verification.Store([turin.ark.x509])
    verifier = verification.PolicyBuilder().store(store).time(FAKE_NOW).build_client_verifier()
    with pytest.raises(verification.VerificationError):
        verifier.verify(leaf, [turin.ask.x509])
    chain = verify_chain(turin.vcek, [turin.ask, turin.ark], now=FAKE_NOW, pins=turin.pins)
    assert chain.root is turin.ark


def test_spl_extensions_are_der_integers_two_bytes_from_0x80() -> None:
    milan = fake(Product.MILAN)
    assert milan.tcb.microcode >= 0x80
    assert b"\x02\x02\x00" + bytes([milan.tcb.microcode]) in milan.vcek.tbs
    ext = kds_extensions(milan.vcek)
    assert ext.spl[8] == milan.tcb.microcode
    assert ext.tcb(Product.MILAN) == milan.tcb
    assert ext.product_name == "Milan-B1" and ext.hwid is not None and len(ext.hwid) == 64


def test_turin_vcek_has_an_8_byte_hwid_and_an_fmc_spl() -> None:
    turin = fake(Product.TURIN)
    ext = kds_extensions(turin.vcek)
    assert ext.hwid == turin.chip_id[:8] and len(ext.hwid) == 8
    assert ext.tcb(Product.TURIN).fmc == 1
    with pytest.raises(SnpFormatError, match="fmcSPL"):
        kds_extensions(fake(Product.MILAN).vcek).tcb(Product.TURIN)


def test_vlek_has_a_csp_id_and_no_hwid(amd: FakeAmd) -> None:
    ext = kds_extensions(amd.vlek)
    assert ext.hwid is None and ext.csp_id == "CN=csp.example"


def test_spki_sha256_is_the_hash_of_the_key_as_the_certificate_carries_it(amd: FakeAmd) -> None:
    spki = amd.ark.x509.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki in amd.ark.tbs
    assert spki_sha256(amd.ark) == hashlib.sha256(spki).digest()
    assert amd.pins.product_of(spki_sha256(amd.ark)) is amd.product
    assert amd.pins.product_of(spki_sha256(amd.ask)) is None


def test_the_pins_name_each_products_ark_ask_and_asvk_by_hash_only() -> None:
    assert sorted((p.product, p.role) for p in PINNED) == sorted(
        (p, r) for p in Product for r in ("ARK", "ASK", "ASVK")
    )
    for pin in PINNED:
        assert re.fullmatch(r"[0-9a-f]{64}", pin.cert_sha256)
        assert re.fullmatch(r"[0-9a-f]{64}", pin.spki_sha256)
        want = {"ARK": "ARK-", "ASK": "SEV-", "ASVK": "SEV-VLEK-"}[pin.role] + pin.product.value
        assert pin.subject_cn == want
    assert len({p.spki_sha256 for p in PINNED}) == len(PINNED)
    assert set(AMD_ARK_PINS.spki_sha256) == set(Product)
    for pin in PINNED:
        got = AMD_ARK_PINS.product_of(bytes.fromhex(pin.spki_sha256))
        assert got is (pin.product if pin.role == "ARK" else None)


def test_pem_bundle_and_der_both_load(amd: FakeAmd) -> None:
    bundle = load_certificates(amd.cert_chain())
    assert [c.subject_cn for c in bundle] == [f"SEV-{amd.product}", f"ARK-{amd.product}"]
    assert [c.der for c in bundle] == [amd.ask.der, amd.ark.der]
    assert load_certificates(amd.vcek.der)[0].der == load_certificate(pem(amd.vcek)).der
    with pytest.raises(SnpFormatError, match="expected one"):
        load_certificate(amd.cert_chain())


_TURIN = fake(Product.TURIN)
_LEAF_DER = _TURIN.vcek.der


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=64),
        st.integers(0, len(_LEAF_DER)).map(lambda n: _LEAF_DER[:n]),
        st.tuples(st.integers(0, len(_LEAF_DER) - 1), st.integers(0, 255)).map(
            lambda t: _LEAF_DER[: t[0]] + bytes([t[1]]) + _LEAF_DER[t[0] + 1 :]
        ),
    )
)
def test_certificate_loader_raises_only_snp_format_error(data: bytes) -> None:
    """Hostile leaf bytes: loading, the AMD extensions and a whole verification raise only
    attest's own errors (format, or a named check)."""
    with contextlib.suppress(SnpFormatError, SnpCheckError):
        cert = load_certificate(data)
        kds_extensions(cert)
        verify_chain(cert, [_TURIN.ask, _TURIN.ark], now=FAKE_NOW, pins=_TURIN.pins)


_ARK_DER = _TURIN.ark.der


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(_ARK_DER) - 1), st.integers(0, 255)), min_size=1, max_size=3
    )
)
def test_a_hostile_ark_raises_only_named_errors(changes: list[tuple[int, int]]) -> None:
    """The presented root is untrusted input too: a mutated ARK is a format error or a named
    refusal, never accepted unless it is still the pinned key's valid self-signed CA."""
    data = bytearray(_ARK_DER)
    for offset, value in changes:
        data[offset] = value
    with contextlib.suppress(SnpFormatError, SnpCheckError):
        ark = load_certificate(bytes(data))
        chain = verify_chain(_TURIN.vcek, [_TURIN.ask, ark], now=FAKE_NOW, pins=_TURIN.pins)
        assert spki_sha256(chain.root) == spki_sha256(_TURIN.ark)
        assert signed_by(chain.root, chain.root)


def test_a_name_attribute_of_the_wrong_string_type_is_a_format_error() -> None:
    """cryptography raises TypeError reading a BIT STRING name attribute under an OID other
    than x500UniqueIdentifier (found by the 1M-input fuzz run, in the EK certificate reader):
    the SNP certificate and CRL loaders say SnpFormatError."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SnpFormatError, match="certificate does not parse"):
        load_certificate(odd_name_certificate(key))
    with pytest.raises(SnpFormatError, match="CRL does not parse"):
        load_crl(odd_name_crl(key))
