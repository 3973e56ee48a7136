"""A small EK PKI made at test time (roots, intermediates, EK certificates with the TCG
extensions), for the EK certificate tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

NOW = datetime(2030, 6, 1, tzinfo=UTC)
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2035, 1, 1, tzinfo=UTC)
TCG_EKU = x509.ObjectIdentifier("2.23.133.8.1")
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclasses.dataclass
class Ca:
    cert: x509.Certificate
    key: Key


def _name(cn: str, *, multi: bool = False) -> x509.Name:
    if not multi:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    # One multi-valued RDN, as Nuvoton's roots have.
    rdn = x509.RelativeDistinguishedName(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test TPM Vendor"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
        ]
    )
    return x509.Name([rdn])


def _ku(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    cn: str,
    issuer: Ca | None = None,
    *,
    key: Key | None = None,
    multi: bool = False,
    critical_policies: bool = False,
) -> Ca:
    key = key or ec.generate_private_key(ec.SECP384R1())
    subject = _name(cn, multi=multi)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ku(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if critical_policies:  # as STMicro's intermediates
        policy = x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), ["http://x.test/"])
        b = b.add_extension(x509.CertificatePolicies([policy]), critical=True)
    return Ca(b.sign(issuer.key if issuer else key, hashes.SHA384()), key)


def ek_builder(
    issuer: Ca, ek: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    tpm = x509.RelativeDistinguishedName(
        [
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:4E544300"),
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "NPCT75x"),
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:00070002"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.cert.subject)
        .public_key(ek)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([tpm]))]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([TCG_EKU]), critical=False)
        .add_extension(_ku(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


# --- writing deviations into a certificate before it is signed ---------------------------------


# A name attribute cryptography refuses by type: the CN's value re-tagged from UTF8String to a
# BIT STRING (0 unused bits). Reading such a name raises TypeError, not ValueError (found by
# bench/fuzz.py, seed 12385504068704895216); every reader must turn it into its format error.
_ODD_CN = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "\x00abc")])
_ODD_AT = datetime(2025, 1, 1)


def _bitstring_cn(der: bytes) -> bytes:
    utf8 = bytes([0x0C, 4]) + b"\x00abc"
    assert utf8 in der
    return der.replace(utf8, bytes([0x03, 4]) + b"\x00abc")


def odd_name_certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A self-signed certificate (DER) whose subject and issuer CN is a BIT STRING."""
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ODD_CN)
        .issuer_name(_ODD_CN)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(_ODD_AT)
        .not_valid_after(_ODD_AT + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _bitstring_cn(cert.public_bytes(Encoding.DER))


def odd_name_crl(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A CRL (DER) whose issuer CN is a BIT STRING."""
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_ODD_CN)
        .last_update(_ODD_AT)
        .next_update(_ODD_AT + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _bitstring_cn(crl.public_bytes(Encoding.DER))
