"""Real SEV-SNP data (tests/data/snp, see corpus.py): AMD's roots against the pinned
fingerprints, real reports of every version parsed and verified, and real mutations refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings

import pytest
from cryptography import x509
from cryptography.x509 import verification
from tests.unit.snp.corpus import (
    AMD_DIR,
    CORPUS,
    EXPECTED,
    REAL,
    REAL_BY_NAME,
    Real,
    amd_certs,
    read,
    requires_corpus,
)

from attest.errors import SnpCheckError, SnpFormatError
from attest.snp.certs import (
    kds_extensions,
    load_certificate,
    load_certificates,
    signed_by,
    spki_sha256,
)
from attest.snp.findings import SnpCheck
from attest.snp.policy import CrlMissing, SnpPolicy, evaluate_snp_policy
from attest.snp.report import Product, Signer, TcbVersion, parse_report
from attest.snp.roots import AMD_ARK_PINS, PINNED
from attest.snp.verify import SnpVerifier, VerifiedReport, verify_chain

pytestmark = requires_corpus


def _verify(real: Real, report: bytes | None = None, **kw: object) -> VerifiedReport:
    """A real report over its own chain, with the product's AMD certificates beside it."""
    args: dict[str, object] = {
        "leaf": real.leaf_bytes(),
        "intermediates": real.chain_bytes(),
        "now": real.now,
    }
    args.update(kw)
    verifier = SnpVerifier(amd_certs=load_certificates(real.kds_chain()))
    return verifier.verify(report or real.report(), **args)  # type: ignore[arg-type]


def _check(exc: pytest.ExceptionInfo[SnpCheckError]) -> SnpCheck:
    return SnpCheck(exc.value.check)


# --- the corpus itself and AMD's roots -----------------------------------------------------------


def test_the_corpus_has_every_expected_file_with_its_hash() -> None:
    provenance = (CORPUS / "PROVENANCE.md").read_text()
    for name, sha256 in EXPECTED.items():
        assert hashlib.sha256(read(name)).hexdigest() == sha256, name
        assert f"| {name} |" in provenance and sha256 in provenance, name
    present = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()}
    assert present - {"PROVENANCE.md"} >= set(EXPECTED)


def test_amds_certificates_have_the_pinned_fingerprints() -> None:
    """Every ARK, ASK and ASVK AMD serves matches roots.PINNED (certificate and key)."""
    by_cn = {p.subject_cn: p for p in PINNED}
    certs = amd_certs()
    assert sorted(c.subject_cn for c in certs) == sorted(by_cn)
    for cert in certs:
        pin = by_cn[cert.subject_cn]
        assert hashlib.sha256(cert.der).hexdigest() == pin.cert_sha256
        assert spki_sha256(cert).hex() == pin.spki_sha256
        if pin.role == "ARK":
            assert cert.self_issued and signed_by(cert, cert)
            assert AMD_ARK_PINS.product_of(spki_sha256(cert)) is pin.product
            assert cert.x509.not_valid_after_utc > dt.datetime(2045, 1, 1, tzinfo=dt.UTC)


def test_the_arks_in_report_chains_are_amds() -> None:
    for name in ("milan-v2-vcek-virtee.chain.pem", "milan-v3-vlek-trustee.chain.pem"):
        arks = [c for c in load_certificates(read(name)) if c.self_issued]
        assert [AMD_ARK_PINS.product_of(spki_sha256(c)) for c in arks] == [Product.MILAN]


# --- reports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("real", REAL, ids=lambda r: r.name)
def test_parses_real_reports(real: Real) -> None:
    r = parse_report(real.report())
    assert (r.version, r.signer, r.signature_algo) == (real.version, real.signer, 1)
    assert r.signed_bytes == real.report()[:0x2A0]
    if real.version >= 3:
        assert r.cpuid_product is real.product
    else:
        assert r.cpuid is None and r.cpuid_product is None
    assert (r.launch_mit_vector is not None) == (real.version >= 5)


def test_turin_report_fields() -> None:
    r = parse_report(REAL_BY_NAME["turin-v5-vcek-msft"].report())
    assert r.cpuid == (0x1A, 0x02, 0x01)
    assert r.chip_id[8:] == bytes(56) and r.chip_id[:8].hex() == "59790fb1c39f35c1"
    tcb = TcbVersion.decode(r.reported_tcb, Product.TURIN)
    assert tcb == TcbVersion(fmc=1, bootloader=1, tee=1, snp=4, microcode=0x51)
    assert tcb.encode(Product.TURIN) == r.reported_tcb


def test_real_debug_and_vmpl_fields() -> None:
    assert parse_report(REAL_BY_NAME["milan-v2-vcek-gosevguest"].report()).policy.debug
    vlek = parse_report(REAL_BY_NAME["milan-v3-vlek-trustee"].report())
    assert vlek.vmpl == 1 and vlek.signer is Signer.VLEK


# --- verification --------------------------------------------------------------------------------


@pytest.mark.parametrize("real", REAL, ids=lambda r: r.name)
def test_real_reports_verify_to_amds_root(real: Real) -> None:
    vr = _verify(real)
    assert (vr.product, vr.signer, vr.report.version) == (real.product, real.signer, real.version)
    assert vr.chain.root.subject_cn == f"ARK-{real.product.value}"
    assert AMD_ARK_PINS.product_of(spki_sha256(vr.chain.root)) is real.product
    assert vr.reported_tcb == vr.chain.extensions.tcb(real.product)


@pytest.mark.parametrize("name", ["milan-v2-vcek-virtee", "milan-v3-vlek-trustee"])
def test_a_chain_holding_the_ark_verifies_on_its_own(name: str) -> None:
    real = REAL_BY_NAME[name]
    vr = SnpVerifier().verify(
        real.report(), leaf=real.leaf_bytes(), intermediates=real.chain_bytes(), now=real.now
    )
    assert vr.chain.root.der in {c.der for c in load_certificates(real.chain_bytes())}


@pytest.mark.parametrize("real", REAL, ids=lambda r: r.name)
def test_the_kds_cert_chain_alone_verifies(real: Real) -> None:
    vr = SnpVerifier().verify(
        real.report(), leaf=real.leaf_bytes(), intermediates=real.kds_chain(), now=real.now
    )
    assert vr.product is real.product


def test_refuses_a_chain_without_the_ark() -> None:
    real = REAL_BY_NAME["turin-v5-vcek-msft"]  # its chain file is the ASK alone
    with pytest.raises(SnpCheckError, match="no AMD ARK was presented") as exc:
        SnpVerifier().verify(
            real.report(), leaf=real.leaf_bytes(), intermediates=real.chain_bytes(), now=real.now
        )
    assert _check(exc) is SnpCheck.ROOT


@pytest.mark.parametrize("offset", [0x004, 0x050, 0x090, 0x0C0, 0x1A0])
def test_refuses_a_real_report_with_a_byte_changed(offset: int) -> None:
    real = REAL_BY_NAME["turin-v5-vcek-msft"]
    data = bytearray(real.report())
    data[offset] ^= 0x01
    with pytest.raises(SnpCheckError) as exc:
        _verify(real, bytes(data))
    assert _check(exc) is SnpCheck.SIGNATURE


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2A0 + 72])
def test_refuses_a_real_report_with_a_signature_byte_changed(offset: int) -> None:
    real = REAL_BY_NAME["genoa-v3-vcek-msft"]
    data = bytearray(real.report())
    data[offset] ^= 0x80
    with pytest.raises(SnpCheckError) as exc:
        _verify(real, bytes(data))
    assert _check(exc) is SnpCheck.SIGNATURE


def test_refuses_another_products_chain() -> None:
    turin, milan = REAL_BY_NAME["turin-v5-vcek-msft"], REAL_BY_NAME["milan-v3-vcek-msft"]
    with pytest.raises(SnpCheckError) as exc:
        _verify(turin, leaf=milan.leaf_bytes(), intermediates=milan.kds_chain())
    assert _check(exc) is SnpCheck.PRODUCT


def test_refuses_an_expired_vlek_at_the_callers_now() -> None:
    vlek = REAL_BY_NAME["milan-v3-vlek-trustee"]
    with pytest.raises(SnpCheckError) as exc:
        _verify(vlek, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert _check(exc) is SnpCheck.VALIDITY


def test_refuses_a_vcek_for_a_vlek_signed_report() -> None:
    vlek = REAL_BY_NAME["milan-v3-vlek-trustee"]
    with pytest.raises(SnpCheckError) as exc:
        _verify(vlek, leaf=REAL_BY_NAME["milan-v3-vcek-msft"].leaf_bytes())
    assert _check(exc) in (SnpCheck.SIGNER, SnpCheck.VALIDITY)


def test_refuses_a_vcek_not_issued_by_amd() -> None:
    real = REAL_BY_NAME["milan-v2-vcek-virtee"]
    with pytest.raises(SnpCheckError) as exc:
        _verify(real, leaf=read("milan-vcek-invalid-trustee.der"))
    assert _check(exc) is SnpCheck.CHAIN


def test_refuses_another_chips_vcek() -> None:
    real = REAL_BY_NAME["milan-v2-vcek-virtee"]
    with pytest.raises(SnpCheckError) as exc:
        _verify(real, leaf=REAL_BY_NAME["milan-v2-vcek-gosevguest"].leaf_bytes())
    assert _check(exc) is SnpCheck.SIGNATURE


def test_the_verifier_caches_the_chain() -> None:
    real = REAL_BY_NAME["turin-v5-vcek-msft"]
    v = SnpVerifier(amd_certs=amd_certs())
    a = v.verify(real.report(), leaf=real.leaf_bytes(), now=real.now)
    b = v.verify(real.report(), leaf=real.leaf_bytes(), now=real.now)
    assert a.chain is b.chain
    with pytest.raises(SnpCheckError):  # validity is still checked at each use
        v.verify(real.report(), leaf=real.leaf_bytes(), now=dt.datetime(2040, 1, 1, tzinfo=dt.UTC))


def test_real_reports_policy_findings() -> None:
    """The go-sev-guest report was launched with DEBUG=1; trustee's VLEK report runs at VMPL 1."""
    for name, check in (
        ("milan-v2-vcek-gosevguest", SnpCheck.DEBUG),
        ("milan-v3-vlek-trustee", SnpCheck.VMPL),
    ):
        real = REAL_BY_NAME[name]
        vr = _verify(real)
        d = evaluate_snp_policy(vr, SnpPolicy(crl_missing=CrlMissing.WARN), crl=None, now=real.now)
        assert {f.check for f in d.refusals} == {check}


# --- AMD's certificates: serial 0, DER INTEGER SPLs, extensions ----------------------------------


def test_vcek_serial_zero_loads_without_a_warning_and_keeps_its_bytes() -> None:
    der = read("milan-v2-vcek-virtee.vcek.der")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cryptography's serial-0 deprecation would raise here
        cert = load_certificate(der)
    assert cert.serial == 0 and cert.der == der and cert.tbs in der
    assert cert.x509.serial_number == 1  # the parsed view only
    ask = load_certificates(read("milan-v2-vcek-virtee.chain.pem"))[0]
    assert signed_by(cert, ask)  # verified over the TBS as received, serial 0
    with pytest.warns(Warning, match="serial number"):  # what plain cryptography does
        x509.load_der_x509_certificate(der)


def test_policy_builder_refuses_the_real_chain_that_link_by_link_accepts() -> None:
    """Why attest verifies each link itself: cryptography's X.509 verifier rejects a VCEK."""
    real = REAL_BY_NAME["turin-v5-vcek-msft"]
    ask, ark, _ = load_certificates(real.kds_chain())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        leaf = x509.load_pem_x509_certificate(real.leaf_bytes())
    store = verification.Store([ark.x509])
    verifier = verification.PolicyBuilder().store(store).time(real.now).build_client_verifier()
    with pytest.raises(verification.VerificationError):
        verifier.verify(leaf, [ask.x509])
    chain = verify_chain(load_certificate(real.leaf_bytes()), [ask, ark], now=real.now)
    assert chain.root.der == ark.der


def test_spl_extensions_are_der_integers_two_bytes_from_0x80() -> None:
    ext = kds_extensions(load_certificate(read("milan-v3-vcek-msft.vcek.pem")))
    assert ext.spl[8] == 0xDB  # 02 02 00 DB in the certificate
    assert ext.tcb(Product.MILAN) == TcbVersion(bootloader=4, tee=0, snp=24, microcode=0xDB)
    assert ext.product_name == "Milan-B0" and ext.hwid is not None and len(ext.hwid) == 64


def test_turin_vcek_has_an_8_byte_hwid_and_an_fmc_spl() -> None:
    ext = kds_extensions(load_certificate(read("turin-v5-vcek-msft.vcek.pem")))
    assert ext.hwid == bytes.fromhex("59790fb1c39f35c1")
    assert ext.tcb(Product.TURIN).fmc == 1
    milan = kds_extensions(load_certificate(read("milan-v3-vcek-msft.vcek.pem")))
    with pytest.raises(SnpFormatError, match="fmcSPL"):
        milan.tcb(Product.TURIN)


def test_vlek_has_a_csp_id_and_no_hwid() -> None:
    ext = kds_extensions(load_certificate(read("milan-v3-vlek-trustee.vlek.der")))
    assert ext.hwid is None and ext.csp_id == "CN=cc-us-east-2.amazonaws.com"


def test_pem_bundle_and_der_both_load() -> None:
    bundle = load_certificates(read("milan-v2-vcek-virtee.chain.pem"))
    assert [c.subject_cn for c in bundle] == ["SEV-Milan", "ARK-Milan"]
    with pytest.raises(SnpFormatError, match="expected one"):
        load_certificate(read("milan-v2-vcek-virtee.chain.pem"))
    assert {f.name for f in AMD_DIR.glob("*.pem")} == {
        n.removeprefix("amd/") for n in EXPECTED if n.startswith("amd/")
    }
