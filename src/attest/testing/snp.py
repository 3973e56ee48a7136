"""A fake AMD: an ARK -> ASK/ASVK -> VCEK/VLEK chain and the reports it signs (tests, bench).

The certificates copy AMD's real shapes: the same subject names (so the fake ARK is a
look-alike of AMD's that only its key tells apart: ``FakeAmd.pins`` pins it in AMD's place,
passed to ``verify_chain`` / ``SnpVerifier`` as their ``pins``), RSA-PSS/SHA-384 links, a P-384
leaf with serial number 0 and the KDS extensions (TCB SPLs as DER INTEGERs, hwid raw: 64 bytes,
8 on Turin; csp_id on a VLEK). ``build_report`` lays out an ATTESTATION_REPORT (v2, v3, v5)
and signs it. Never used by attest itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from attest.snp.certs import AmdCertificate, load_certificate, spki_sha256, split_certificate
from attest.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table
from attest.snp.report import REPORT_SIZE, SIGNED_SIZE, Product, Signer, TcbVersion
from attest.snp.roots import ArkPins

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
CPUID = {Product.MILAN: (0x19, 0x01, 0x01), Product.GENOA: (0x19, 0x11, 0x01)}
CPUID[Product.TURIN] = (0x1A, 0x02, 0x01)
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
KDS = "1.3.6.1.4.1.3704.1."


def pem(cert: AmdCertificate) -> bytes:
    """The certificate as received (serial 0 kept), PEM-armoured."""
    body = base64.encodebytes(cert.der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(KDS + oid), value)


def der_int(v: int) -> bytes:
    return b"\x02\x01" + bytes([v]) if v < 0x80 else b"\x02\x02\x00" + bytes([v])


def _ia5(s: str) -> bytes:
    return b"\x16" + bytes([len(s)]) + s.encode()


def tcb_extensions(tcb: TcbVersion, product: Product) -> list[x509.UnrecognizedExtension]:
    spl = {1: tcb.bootloader, 2: tcb.tee, 3: tcb.snp, 8: tcb.microcode, 5: 0, 6: 0, 7: 0}
    if product.fmc_in_tcb:
        spl[9] = tcb.fmc or 0
    else:
        spl[4] = 0
    return [_ext(f"3.{n}", der_int(v)) for n, v in sorted(spl.items())]


def _sign(builder: x509.CertificateBuilder, key: rsa.RSAPrivateKey) -> x509.Certificate:
    return builder.sign(key, hashes.SHA384(), rsa_padding=PSS)


def with_serial_zero(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> bytes:
    """``cert`` (serial 1, which cryptography's builder insists on) re-signed with serial 0,
    as AMD's KDS issues every VCEK / VLEK."""
    der = cert.public_bytes(Encoding.DER)
    tbs, sig, serial, at = split_certificate(der)
    assert serial == 1 and der.endswith(sig)
    patched = bytearray(der)
    patched[at] = 0  # the one-byte serial, in place: no length changes
    tbs_at = der.index(tbs)
    new_sig = issuer_key.sign(bytes(patched[tbs_at : tbs_at + len(tbs)]), PSS, hashes.SHA384())
    assert len(new_sig) == len(sig)
    return bytes(patched[: len(der) - len(sig)]) + new_sig


@dataclass
class FakeAmd:
    """One product's fake AMD PKI and a chip with a VCEK and a VLEK."""

    product: Product
    tcb: TcbVersion
    chip_id: bytes
    ark_key: rsa.RSAPrivateKey
    ark: AmdCertificate
    ask_key: rsa.RSAPrivateKey
    ask: AmdCertificate
    asvk: AmdCertificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: AmdCertificate
    vlek_key: ec.EllipticCurvePrivateKey
    vlek: AmdCertificate
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pins(self) -> ArkPins:
        """This fake ARK's key pinned for its product (as ``AMD_ARK_PINS`` pins AMD's)."""
        return ArkPins({self.product: spki_sha256(self.ark)})

    def cert_chain(self, signer: Signer = Signer.VCEK) -> bytes:
        """PEM ASK + ARK (ASVK + ARK for a VLEK), the shape of AMD's KDS cert_chain."""
        first = self.asvk if signer is Signer.VLEK else self.ask
        return pem(first) + pem(self.ark)

    def leaf(self, signer: Signer) -> tuple[AmdCertificate, ec.EllipticCurvePrivateKey]:
        if signer is Signer.VLEK:
            return self.vlek, self.vlek_key
        return self.vcek, self.vcek_key

    def report(self, **fields: object) -> bytes:
        """A signed report from this chip; ``fields`` override ``build_report``'s defaults."""
        signer = fields.pop("signer", Signer.VCEK)
        assert isinstance(signer, Signer)
        kwargs: dict[str, object] = {
            "product": self.product,
            "tcb": self.tcb,
            "chip_id": self.chip_id,
            "signer": signer,
        }
        kwargs.update(fields)
        return build_report(key=self.leaf(signer)[1], **kwargs)  # type: ignore[arg-type]


def _ca(
    name: str,
    issuer: str,
    key: rsa.RSAPrivateKey,
    signer: rsa.RSAPrivateKey,
    serial: int,
    not_before: dt.datetime = EPOCH,
    not_after: dt.datetime = EPOCH + dt.timedelta(days=25 * 365),
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(amd_name(name))
        .issuer_name(amd_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if name == issuer else 0), True
        )
    )
    return _sign(b, signer)


def reissue_ark(fake: FakeAmd, *, not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    """The fake ARK re-issued under the same key with another validity (DER)."""
    cn = f"ARK-{fake.product.value}"
    cert = _ca(cn, cn, fake.ark_key, fake.ark_key, 0x10000, not_before, not_after)
    return cert.public_bytes(Encoding.DER)


def _leaf(
    cn: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    exts: list[x509.UnrecognizedExtension],
    days: int,
) -> bytes:
    b = (
        x509.CertificateBuilder()
        .subject_name(amd_name(cn))
        .issuer_name(amd_name(issuer))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(EPOCH)
        .not_valid_after(EPOCH + dt.timedelta(days=days))
    )
    for e in exts:
        b = b.add_extension(e, critical=False)
    return with_serial_zero(_sign(b, issuer_key), issuer_key)


def make_fake_amd(
    product: Product, *, tcb: TcbVersion | None = None, rsa_bits: int = 2048
) -> FakeAmd:
    p = product.value
    tcb = tcb or TcbVersion(
        bootloader=9, tee=0, snp=23, microcode=0xD5, fmc=1 if product.fmc_in_tcb else None
    )
    hwid = os.urandom(8 if product.fmc_in_tcb else 64)
    keys = [rsa.generate_private_key(65537, rsa_bits) for _ in range(3)]
    ark_key, ask_key, asvk_key = keys
    ark = _ca(f"ARK-{p}", f"ARK-{p}", ark_key, ark_key, 0x10000)
    ask = _ca(f"SEV-{p}", f"ARK-{p}", ask_key, ark_key, 0x10001)
    asvk = _ca(f"SEV-VLEK-{p}", f"ARK-{p}", asvk_key, ark_key, 0x10101)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    vlek_key = ec.generate_private_key(ec.SECP384R1())
    common = [_ext("1", der_int(1)), _ext("2", _ia5(p if product.fmc_in_tcb else f"{p}-B1"))]
    common += tcb_extensions(tcb, product)
    vcek = _leaf("SEV-VCEK", f"SEV-{p}", vcek_key, ask_key, [*common, _ext("4", hwid)], 2555)
    csp = _ext("5", _ia5("CN=csp.example"))
    vlek = _leaf("SEV-VLEK", f"SEV-VLEK-{p}", vlek_key, asvk_key, [*common, csp], 365)
    return FakeAmd(
        product=product,
        tcb=tcb,
        chip_id=hwid.ljust(64, b"\0"),
        ark_key=ark_key,
        ark=load_certificate(ark.public_bytes(Encoding.DER)),
        ask_key=ask_key,
        ask=load_certificate(ask.public_bytes(Encoding.DER)),
        asvk=load_certificate(asvk.public_bytes(Encoding.DER)),
        vcek_key=vcek_key,
        vcek=load_certificate(vcek),
        vlek_key=vlek_key,
        vlek=load_certificate(vlek),
        extra={"asvk_key": asvk_key},
    )


def build_report(
    *,
    key: ec.EllipticCurvePrivateKey | None,
    product: Product,
    tcb: TcbVersion,
    chip_id: bytes,
    signer: Signer = Signer.VCEK,
    version: int = 3,
    policy: int = 0x30000,
    vmpl: int = 0,
    report_data: bytes = b"",
    measurement: bytes = b"\x11" * 48,
    host_data: bytes = b"",
    reported_tcb: bytes | None = None,
    cpuid: tuple[int, int, int] | None = None,
    mask_chip_key: bool = False,
) -> bytes:
    """An ATTESTATION_REPORT with these fields, signed by ``key`` (ECDSA P-384/SHA-384)."""
    r = bytearray(REPORT_SIZE)

    def put(off: int, value: bytes) -> None:
        r[off : off + len(value)] = value

    raw_tcb = reported_tcb if reported_tcb is not None else tcb.encode(product)
    put(0x000, version.to_bytes(4, "little"))
    put(0x008, policy.to_bytes(8, "little"))
    put(0x030, vmpl.to_bytes(4, "little"))
    put(0x034, (1).to_bytes(4, "little"))
    for off in (0x038, 0x180, 0x1E0, 0x1F0):  # current, reported, committed, launch TCB
        put(off, raw_tcb)
    put(0x048, ((signer.value << 2) | (2 if mask_chip_key else 0)).to_bytes(4, "little"))
    put(0x050, report_data.ljust(64, b"\0"))
    put(0x090, measurement)
    put(0x0C0, host_data.ljust(32, b"\0"))
    put(0x140, os.urandom(32))
    if version >= 3:
        put(0x188, bytes(cpuid or CPUID[product]))
    put(0x1A0, b"\0" * 64 if mask_chip_key else chip_id)
    put(0x1E8, bytes([9, 55, 1, 0, 9, 55, 1]))  # current / committed build, minor, major
    return sign_report(bytes(r), key)


def sign_report(report: bytes, key: ec.EllipticCurvePrivateKey | None) -> bytes:
    body = bytearray(report[:SIGNED_SIZE]) + bytes(REPORT_SIZE - SIGNED_SIZE)
    if key is not None:
        r, s = decode_dss_signature(key.sign(bytes(body[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
        body[SIGNED_SIZE : SIGNED_SIZE + 72] = r.to_bytes(72, "little")
        body[SIGNED_SIZE + 72 : SIGNED_SIZE + 144] = s.to_bytes(72, "little")
    return bytes(body)


def make_crl(
    fake: FakeAmd,
    *,
    revoked: tuple[int, ...] = (),
    this_update: dt.datetime = EPOCH,
    next_update: dt.datetime | None = None,
    key: rsa.RSAPrivateKey | None = None,
) -> bytes:
    """A CRL from the fake ARK (AMD's shape: RSA-PSS/SHA-384, revoked ASK serials)."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(fake.ark.x509.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + dt.timedelta(days=7))
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update)
        b = b.add_revoked_certificate(entry.build())
    crl = b.sign(key or fake.ark_key, hashes.SHA384(), rsa_padding=PSS)
    return crl.public_bytes(Encoding.DER)


def fake_guest_dir(fake: FakeAmd, directory: Path, **fields: object) -> Path:
    """The files ``attest.node.snp_guest.FakeSnpGuest`` reads (``--snp-guest fake:DIR``): a
    report of this chip as the template (``fields`` as for ``FakeAmd.report``), the VCEK's
    private key, and the certificate table (VCEK, ASK, ARK) the host would serve."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.bin").write_bytes(fake.report(**fields))
    key = fake.vcek_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (directory / "key.pem").write_bytes(key)
    (directory / "key.pem").chmod(0o600)
    (directory / "certs.bin").write_bytes(guest_cert_table(fake))
    return directory


def guest_cert_table(fake: FakeAmd) -> bytes:
    """The certificate table a host serves with this chip's VCEK reports."""
    return build_cert_table(
        {VCEK_GUID: fake.vcek.der, ASK_GUID: fake.ask.der, ARK_GUID: fake.ark.der}
    )
