"""AMD KDS certificates and CRLs, and the chain ARK -> ASK/ASVK -> VCEK/VLEK (pure).

AMD's certificates follow "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification" (pub. 57230): every link is RSASSA-PSS with SHA-384 (MGF1 SHA-384, 48-byte
salt), the leaf key is ECDSA P-384, and the leaf carries AMD extensions under
1.3.6.1.4.1.3704.1: structVersion (.1), productName (.2), the TCB SPLs (.3.x: 1 boot loader,
2 TEE, 3 SNP, 4-7 reserved, 8 microcode, 9 FMC on Turin), hwid (.4, VCEK) and csp_id (.5, VLEK).

Two habits of real data are handled on purpose:
- every VCEK/VLEK has serial number 0, which RFC 5280 forbids and ``cryptography`` warns about
  (and will refuse). ``load_certificate`` splits the DER itself, keeps the TBS and signature as
  received (what the issuer signed), and gives ``cryptography`` a copy whose serial reads 1;
  ``AmdCertificate.serial`` is the serial as received.
- ``cryptography``'s X.509 PolicyBuilder refuses the VCEK (no authorityKeyIdentifier, serial 0),
  so each link is verified here, one signature at a time.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from attest.errors import SnpFormatError
from attest.snp.report import Product, TcbVersion

MAX_CERT_SIZE = 16 * 1024
MAX_BUNDLE_CERTS = 8
MAX_CRL_SIZE = 1024 * 1024
_KDS_ARC = "1.3.6.1.4.1.3704.1."
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----"
)


# --- DER: just enough to find the TBS, the signature and the serial ---------------------------


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``; definite lengths only."""
    if pos + 2 > end:
        raise SnpFormatError("truncated DER element")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise SnpFormatError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise SnpFormatError("DER element overruns its container")
    return tag, pos, pos + length


@dataclass(frozen=True)
class AmdCertificate:
    """An AMD certificate read from bytes. Nothing in it is trusted until ``verify_chain``."""

    der: bytes  # as received
    tbs: bytes  # the TBSCertificate as received: what the issuer signed
    signature: bytes
    serial: int  # as received; every real VCEK / VLEK has 0
    x509: x509.Certificate  # parsed view (serial 0 read as 1, see the module docstring)

    @property
    def subject_cn(self) -> str:
        return _cn(self.x509.subject)

    @property
    def issuer_cn(self) -> str:
        return _cn(self.x509.issuer)

    @property
    def self_issued(self) -> bool:
        return self.x509.subject == self.x509.issuer


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def split_certificate(der: bytes) -> tuple[bytes, bytes, int, int]:
    """(tbs, signature, serial, offset of the serial's content) of a Certificate."""
    end = len(der)
    tag, start, cert_end = _tlv(der, 0, end)
    if tag != 0x30 or cert_end != end:
        raise SnpFormatError("not a DER certificate (outer SEQUENCE)")
    tag, tbs_start, tbs_end = _tlv(der, start, end)
    if tag != 0x30:
        raise SnpFormatError("certificate without a TBSCertificate")
    tbs = der[start:tbs_end]
    pos = tbs_start
    tag, _, field_end = _tlv(der, pos, tbs_end)
    if tag == 0xA0:  # [0] version
        pos = field_end
        tag, _, field_end = _tlv(der, pos, tbs_end)
    if tag != 0x02:
        raise SnpFormatError("certificate without a serial number")
    _, serial_start, serial_end = _tlv(der, pos, tbs_end)
    serial = int.from_bytes(der[serial_start:serial_end], "big", signed=True)
    tag, _, alg_end = _tlv(der, tbs_end, end)
    if tag != 0x30:
        raise SnpFormatError("certificate without a signature algorithm")
    tag, sig_start, sig_end = _tlv(der, alg_end, end)
    if tag != 0x03 or sig_end != end or sig_start == sig_end or der[sig_start] != 0:
        raise SnpFormatError("certificate without a signature BIT STRING")
    return tbs, der[sig_start + 1 : sig_end], serial, serial_start


def load_certificate(data: bytes) -> AmdCertificate:
    """One certificate, DER or PEM. Raises ``SnpFormatError``."""
    certs = load_certificates(data)
    if len(certs) != 1:
        raise SnpFormatError(f"expected one certificate, found {len(certs)}")
    return certs[0]


def load_certificates(data: bytes) -> list[AmdCertificate]:
    """A PEM bundle (at most ``MAX_BUNDLE_CERTS``) or one DER certificate."""
    data = bytes(data)
    if len(data) > MAX_BUNDLE_CERTS * MAX_CERT_SIZE:
        raise SnpFormatError(f"certificate input of {len(data)} bytes is too large")
    if b"-----BEGIN" not in data:
        return [_load_der(data)]
    blocks = _PEM_BLOCK.findall(data)
    if not blocks or len(blocks) > MAX_BUNDLE_CERTS:
        raise SnpFormatError(f"expected 1-{MAX_BUNDLE_CERTS} PEM certificates")
    try:
        ders = [binascii.a2b_base64(b"".join(b.split()), strict_mode=True) for b in blocks]
    except binascii.Error as exc:
        raise SnpFormatError(f"bad base64 in a PEM certificate: {exc}") from None
    return [_load_der(d) for d in ders]


def _load_der(der: bytes) -> AmdCertificate:
    if len(der) > MAX_CERT_SIZE:
        raise SnpFormatError(f"a certificate of {len(der)} bytes is too large")
    tbs, signature, serial, serial_at = split_certificate(der)
    if serial < 0:
        raise SnpFormatError(f"certificate serial number {serial} is negative")
    parse = der
    if serial == 0:  # the VCEK / VLEK: read a copy whose one-byte serial is 1
        parse = der[:serial_at] + b"\x01" + der[serial_at + 1 :]
    try:
        cert = x509.load_der_x509_certificate(parse)
        # A CN over X.520's 64 (a non-AMD certificate given as the VCEK or chain) is refused
        # by the checks that follow, not by two lines of cryptography's UserWarning on stderr.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Attribute's length must be", UserWarning)
            cert.subject, cert.issuer, cert.public_key()  # noqa: B018 -- parsed lazily: fail here
    # TypeError: a name attribute cryptography refuses by type (a BIT STRING, not x500UID)
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise SnpFormatError(f"certificate does not parse: {exc}") from None
    return AmdCertificate(der=der, tbs=tbs, signature=signature, serial=serial, x509=cert)


def signed_by(child: AmdCertificate, issuer: AmdCertificate) -> bool:
    """Whether ``issuer``'s RSA key made ``child``'s RSASSA-PSS/SHA-384 signature."""
    key = issuer.x509.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    if child.x509.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return False
    try:
        key.verify(child.signature, child.tbs, _PSS, hashes.SHA384())
    except InvalidSignature:
        return False
    return True


def spki_sha256(cert: AmdCertificate) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo DER: what ``attest.snp.roots`` pins."""
    spki = cert.x509.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def is_ca(cert: AmdCertificate) -> bool:
    try:
        bc = cert.x509.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except ValueError as exc:
        raise SnpFormatError(f"{cert.subject_cn}: extensions do not parse: {exc}") from None
    return bc.ca


def valid_at(cert: AmdCertificate, now: datetime) -> bool:
    return cert.x509.not_valid_before_utc <= now <= cert.x509.not_valid_after_utc


# --- the AMD extensions of a VCEK / VLEK -------------------------------------------------------


@dataclass(frozen=True)
class KdsExtensions:
    """The AMD extensions of a VCEK / VLEK (KDS spec, "VCEK Certificate Extensions")."""

    product_name: str | None
    spl: Mapping[int, int]  # 1.3.6.1.4.1.3704.1.3.N -> SPL
    hwid: bytes | None  # VCEK: 64 bytes (Milan, Genoa) or 8 (Turin)
    csp_id: str | None  # VLEK

    def tcb(self, product: Product) -> TcbVersion:
        """The TCB this leaf certifies; a missing SPL extension is a format error."""
        names = {1: "blSPL", 2: "teeSPL", 3: "snpSPL", 8: "ucodeSPL", 9: "fmcSPL"}
        need = (1, 2, 3, 8, 9) if product.fmc_in_tcb else (1, 2, 3, 8)
        missing = [names[n] for n in need if n not in self.spl]
        if missing:
            raise SnpFormatError(f"the leaf certificate has no {', '.join(missing)} extension")
        s = self.spl
        fmc = s[9] if product.fmc_in_tcb else None
        return TcbVersion(bootloader=s[1], tee=s[2], snp=s[3], microcode=s[8], fmc=fmc)


def _der_uint8(value: bytes, what: str) -> int:
    """A DER INTEGER 0..255: 02 01 xx (xx < 0x80) or 02 02 00 xx (xx >= 0x80)."""
    ok = (len(value) == 3 and value[:2] == b"\x02\x01" and value[2] < 0x80) or (
        len(value) == 4 and value[:3] == b"\x02\x02\x00" and value[3] >= 0x80
    )
    if not ok:
        raise SnpFormatError(f"{what}: not a DER INTEGER 0-255: {value.hex()}")
    return value[-1]


def _der_ia5(value: bytes, what: str) -> str:
    if len(value) < 2 or value[0] != 0x16 or value[1] != len(value) - 2 or value[1] > 127:
        raise SnpFormatError(f"{what}: not a short DER IA5String")
    try:
        return value[2:].decode("ascii")
    except UnicodeDecodeError:
        raise SnpFormatError(f"{what}: not ASCII") from None


def _hwid(value: bytes) -> bytes:
    """The KDS stores hwid raw (64 bytes; 8 on Turin); accept a DER OCTET STRING as well."""
    if len(value) in (8, 64):
        return value
    if len(value) in (10, 66) and value[0] == 0x04 and value[1] == len(value) - 2:
        return value[2:]
    raise SnpFormatError(f"hwid extension of {len(value)} bytes")


def kds_extensions(cert: AmdCertificate) -> KdsExtensions:
    product_name = hwid = csp_id = None
    spl: dict[int, int] = {}
    try:
        extensions = list(cert.x509.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        raise SnpFormatError(f"{cert.subject_cn}: extensions do not parse: {exc}") from None
    for ext in extensions:
        oid = ext.oid.dotted_string
        if not oid.startswith(_KDS_ARC) or not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        value, rest = ext.value.value, oid[len(_KDS_ARC) :]
        if rest == "2":
            product_name = _der_ia5(value, "productName")
        elif rest.startswith("3.") and rest[2:].isdigit():
            spl[int(rest[2:])] = _der_uint8(value, f"SPL {oid}")
        elif rest == "4":
            hwid = _hwid(value)
        elif rest == "5":
            csp_id = _der_ia5(value, "csp_id")
    return KdsExtensions(product_name=product_name, spl=spl, hwid=hwid, csp_id=csp_id)


# --- CRLs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnverifiedCrl:
    crl: x509.CertificateRevocationList


def load_crl(data: bytes) -> UnverifiedCrl:
    """An AMD KDS CRL (DER or PEM). Raises ``SnpFormatError``."""
    data = bytes(data)
    if len(data) > MAX_CRL_SIZE:
        raise SnpFormatError(f"a CRL of {len(data)} bytes is too large")
    try:
        if b"-----BEGIN" in data:
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        crl.issuer  # noqa: B018 -- parse now
    except (ValueError, TypeError, x509.InvalidVersion) as exc:  # TypeError: as certificates
        raise SnpFormatError(f"CRL does not parse: {exc}") from None
    return UnverifiedCrl(crl)


def crl_signed_by(crl: UnverifiedCrl, issuer: AmdCertificate) -> bool:
    key = issuer.x509.public_key()
    c = crl.crl
    if not isinstance(key, rsa.RSAPublicKey) or c.issuer != issuer.x509.subject:
        return False
    if c.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return False
    try:
        key.verify(c.signature, c.tbs_certlist_bytes, _PSS, hashes.SHA384())
    except InvalidSignature:
        return False
    return True
