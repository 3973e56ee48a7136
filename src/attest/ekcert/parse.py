"""Read X.509 certificates as TPM vendors ship them (RFC 5280 §4.1, TCG EK Credential Profile).

``parse_certificate`` accepts a DER certificate, the same followed by NV padding (the contents
of a TPM NV index are often 0xFF- or 0x00-filled up to the index size), and the BER deviations
real vendor certificates carry. It keeps three views of one certificate:

- ``der``: the certificate's bytes exactly as read (padding removed);
- ``tbs``: the to-be-signed bytes exactly as signed -- signatures are checked over these;
- ``decoded``: cryptography's reading of a DER re-encoding, used for the fields. The re-encoding
  changes no value (it orders SET OF members, drops DEFAULT values written out, shortens
  lengths), so every field read from it is the field that was signed; its own signature does
  not cover its bytes and is never checked.

Every rewrite is reported in ``deviations``. Nothing here verifies anything: a
``ParsedCertificate`` is untrusted until ``attest.ekcert.verify`` says otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from attest.ekcert import der
from attest.ekcert.der import Deviation, Tlv, Tolerated
from attest.errors import CertificateFormatError

#: Largest certificate accepted (EK certificates are 1-2 KiB; NV indices hold a few KiB).
MAX_CERTIFICATE_BYTES = 64 * 1024
#: Largest input (certificate plus NV padding, or a PEM/DER bundle file).
MAX_INPUT_BYTES = 4 * 1024 * 1024
MAX_BUNDLE_CERTIFICATES = 1000

#: TCG OIDs (EK Credential Profile 2.x §3.2, TCG OID registry).
TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
TCG_AT_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
TCG_AT_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
TCG_AT_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")

_OID_BASIC_CONSTRAINTS = b"\x55\x1d\x13"  # 2.5.29.19, DER contents
_ECDSA_WITH_SHA2 = b"\x2a\x86\x48\xce\x3d\x04\x03"  # 1.2.840.10045.4.3 (RFC 5758 §3.2)
_PEM = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----(.*?)-----END", re.S)


@dataclass(frozen=True, slots=True, eq=False)
class ParsedCertificate:
    """A certificate as read; nothing about it is verified (see the module docstring)."""

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    tbs_signature_algorithm: bytes = field(repr=False)  # DER re-encoding, to compare
    signature_algorithm: bytes = field(repr=False)  # DER re-encoding of the outer one
    decoded: x509.Certificate = field(repr=False)
    deviations: tuple[Tolerated, ...]
    sha256: bytes = field(repr=False)

    # The fields callers read, as cryptography parses them.
    @property
    def subject(self) -> x509.Name:
        return self.decoded.subject

    @property
    def issuer(self) -> x509.Name:
        return self.decoded.issuer

    @property
    def serial_number(self) -> int:
        return self.decoded.serial_number

    @property
    def not_valid_before_utc(self) -> datetime:
        return self.decoded.not_valid_before_utc

    @property
    def not_valid_after_utc(self) -> datetime:
        return self.decoded.not_valid_after_utc

    @property
    def extensions(self) -> x509.Extensions:
        return self.decoded.extensions

    def public_key(self) -> CertificatePublicKeyTypes:
        return self.decoded.public_key()

    @property
    def self_issued(self) -> bool:
        return bool(self.subject == self.issuer)

    def describe(self) -> str:
        subject = self.subject.rfc4514_string() or "<empty subject>"
        return (
            f"{subject!r} (serial {self.serial_number:#x}, issuer {self.issuer.rfc4514_string()!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParsedCertificate) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


def _children(node: Tlv, count: tuple[int, int], what: str) -> tuple[Tlv, ...]:
    if not node.constructed or not count[0] <= len(node.children) <= count[1]:
        raise CertificateFormatError(f"{what} is not a SEQUENCE of {count[0]}..{count[1]}")
    return node.children


def _algorithm(node: Tlv, found: list[Tolerated], where: str) -> bytes:
    """AlgorithmIdentifier (RFC 5280 §4.1.1.2) re-encoded; ECDSA parameters dropped."""
    parts = _children(node, (1, 2), where)
    if not parts[0].is_universal(der.OID):
        raise CertificateFormatError(f"{where} has no algorithm OID")
    if len(parts) == 2 and parts[0].content.startswith(_ECDSA_WITH_SHA2):
        # RFC 5758 §3.2: the parameters field MUST be absent; some vendors write NULL.
        found.append(Tolerated(Deviation.ECDSA_PARAMETERS, where))
        parts = parts[:1]
    return der.sequence(*(der.encode(p, found, where) for p in parts))


def _extension_value(oid: bytes, value: Tlv, found: list[Tolerated], where: str) -> bytes:
    """extnValue re-encoded: its contents are the DER of the extension's type."""
    inner_found: list[Tolerated] = []
    try:
        inner = der.read_exactly(value.content, inner_found)
    except CertificateFormatError:
        return der.encode(value, found, where)  # opaque; cryptography will judge it
    found.extend(inner_found)
    if oid == _OID_BASIC_CONSTRAINTS and inner.is_universal(der.SEQUENCE):
        parts = list(inner.children)
        # BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... } (RFC 5280 §4.2.1.9)
        if parts and parts[0].is_universal(der.BOOLEAN) and parts[0].content == b"\x00":
            found.append(Tolerated(Deviation.EXPLICIT_DEFAULT, f"{where}: cA FALSE"))
            parts = parts[1:]
        body = der.sequence(*(der.encode(p, found, where) for p in parts))
    else:
        body = der.encode(inner, found, where)
    return der.header(b"\x04", len(body)) + body


def _extensions(node: Tlv, found: list[Tolerated]) -> bytes:
    """[3] EXPLICIT Extensions; Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT
    FALSE, extnValue OCTET STRING } (RFC 5280 §4.1)."""
    (seq,) = _children(node, (1, 1), "extensions")
    out = []
    for ext in _children(seq, (1, 200), "extensions"):
        parts = _children(ext, (2, 3), "an extension")
        oid, value = parts[0], parts[-1]
        if not oid.is_universal(der.OID) or not value.is_universal(der.OCTET_STRING):
            raise CertificateFormatError("an extension is not (OID, [critical], OCTET STRING)")
        where = f"extension {_dotted(oid.content)}"
        encoded = [der.encode(oid, found, where)]
        if len(parts) == 3:
            if not parts[1].is_universal(der.BOOLEAN):
                raise CertificateFormatError(f"{where}: critical is not a BOOLEAN")
            if parts[1].content == b"\x00":
                found.append(Tolerated(Deviation.EXPLICIT_DEFAULT, f"{where}: critical FALSE"))
            else:
                encoded.append(der.encode(parts[1], found, where))
        encoded.append(_extension_value(oid.content, value, found, where))
        out.append(der.sequence(*encoded))
    body = der.sequence(*out)
    return der.header(node.ident, len(body)) + body


def _tbs(node: Tlv, found: list[Tolerated]) -> tuple[bytes, bytes]:
    """(TBSCertificate re-encoded, its signature AlgorithmIdentifier re-encoded)."""
    parts = list(_children(node, (6, 10), "tbsCertificate"))
    out = []
    if parts[0].is_context(0):  # version [0] EXPLICIT Version DEFAULT v1
        version = _children(parts[0], (1, 1), "version")[0]
        if version.is_universal(der.INTEGER) and version.content == b"\x00":
            found.append(Tolerated(Deviation.EXPLICIT_DEFAULT, "tbsCertificate: version v1"))
        else:
            out.append(der.encode(parts[0], found, "version"))
        parts = parts[1:]
    if len(parts) < 6:
        raise CertificateFormatError("tbsCertificate lacks a mandatory field")
    serial, alg, issuer, validity, subject, spki, *rest = parts
    if not serial.is_universal(der.INTEGER):
        raise CertificateFormatError("tbsCertificate: serialNumber is not an INTEGER")
    signature = _algorithm(alg, found, "tbsCertificate.signature")
    out += [der.encode(serial, found, "serialNumber"), signature]
    for name, part in (("issuer", issuer), ("validity", validity), ("subject", subject)):
        out.append(der.encode(part, found, name))
    out.append(der.encode(spki, found, "subjectPublicKeyInfo"))
    for part in rest:
        out.append(
            _extensions(part, found) if part.is_context(3) else der.encode(part, found, "ids")
        )
    return der.sequence(*out), signature


def _dotted(content: bytes) -> str:
    """An OID's dotted form from its contents octets (X.690 §8.19), for messages only."""
    arcs: list[int] = []
    value = width = 0
    for b in content:
        value, width = (value << 7) | (b & 0x7F), width + 1
        if width > 8:
            return content.hex()
        if not b & 0x80:
            arcs.append(value)
            value = width = 0
    if not arcs or width:
        return content.hex()
    top = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (top, arcs[0] - 40 * top, *arcs[1:]))


def _summarise(found: list[Tolerated]) -> tuple[Tolerated, ...]:
    """One entry per deviation, naming up to three places."""
    by_kind: dict[Deviation, list[str]] = {}
    for t in found:
        places = by_kind.setdefault(t.deviation, [])
        if t.detail not in places:
            places.append(t.detail)
    out = []
    for kind, places in by_kind.items():
        more = f" and {len(places) - 3} more" if len(places) > 3 else ""
        out.append(Tolerated(kind, ", ".join(places[:3]) + more))
    return tuple(out)


def parse_certificate(data: bytes) -> ParsedCertificate:
    """Read one certificate: DER or BER, possibly followed by NV padding. Raises
    ``CertificateFormatError`` for anything that is not a certificate."""
    if len(data) > MAX_INPUT_BYTES:
        raise CertificateFormatError(f"{len(data)} bytes is more than any certificate")
    if not data or data[0] != 0x30:
        raise CertificateFormatError("not an X.509 certificate (no outer SEQUENCE)")
    found: list[Tolerated] = []
    outer = der.read(data, found)
    if outer.end > MAX_CERTIFICATE_BYTES:
        raise CertificateFormatError(f"certificate of {outer.end} bytes is too large")
    if outer.end < len(data):
        trailing = data[outer.end :]
        fill = (
            {0xFF: "0xFF", 0x00: "0x00"}.get(trailing[0], "other")
            if len(set(trailing)) == 1
            else "mixed"
        )
        found.append(Tolerated(Deviation.TRAILING_DATA, f"{len(trailing)} bytes of {fill} fill"))
    tbs_node, alg_node, sig_node = _children(outer, (3, 3), "certificate")
    if not sig_node.is_universal(der.BIT_STRING):
        raise CertificateFormatError("certificate: signatureValue is not a BIT STRING")
    tbs, tbs_alg = _tbs(tbs_node, found)
    outer_alg = _algorithm(alg_node, found, "signatureAlgorithm")
    canonical = der.sequence(tbs, outer_alg, der.encode(sig_node, found, "signatureValue"))
    try:
        cert = x509.load_der_x509_certificate(canonical)
        # cryptography reads names, extensions and the key lazily: read them now, so a
        # certificate that parses here never raises a parse error later. Google's vTPM EK
        # certificates name CAs whose CN is longer than X.520's 64: tolerated, and not a
        # UserWarning on stderr beside the command's one line.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Attribute's length must be", UserWarning)
            for lazy in (
                cert.version,
                cert.issuer,
                cert.subject,
                cert.extensions,
                cert.serial_number,
            ):
                del lazy
        cert.public_key()
    except (
        ValueError,
        TypeError,  # a name attribute cryptography refuses by type (a BIT STRING but not x500UID)
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.InvalidVersion,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise CertificateFormatError(f"not an X.509 certificate: {exc}") from None
    original = data[: outer.end]
    return ParsedCertificate(
        der=original,
        tbs=data[tbs_node.start : tbs_node.end],
        tbs_signature_algorithm=tbs_alg,
        signature_algorithm=outer_alg,
        decoded=cert,
        deviations=_summarise(found),
        sha256=hashlib.sha256(original).digest(),
    )


def from_cryptography(cert: x509.Certificate) -> ParsedCertificate:
    """A certificate cryptography already parsed (so DER), as a ``ParsedCertificate``."""
    return parse_certificate(cert.public_bytes(Encoding.DER))


def parse_input(data: bytes) -> ParsedCertificate:
    """One certificate from a file: PEM (the first certificate in it), or DER / raw NV
    contents."""
    if data.lstrip().startswith(b"-----BEGIN"):
        certs = parse_bundle(data)
        if not certs:
            raise CertificateFormatError("no certificate in the PEM input")
        return certs[0]
    return parse_certificate(data)


def parse_bundle(data: bytes) -> list[ParsedCertificate]:
    """Certificates from a CA file as vendors publish them: PEM with one or more
    certificates (text around them ignored), or one DER certificate (``.cer``/``.crt``).
    Any certificate that does not parse fails the whole file (``parse_bundle_lenient`` does
    not)."""
    certs, problems = parse_bundle_lenient(data)
    if problems:
        raise CertificateFormatError(problems[0])
    return certs


def parse_bundle_lenient(data: bytes) -> tuple[list[ParsedCertificate], list[str]]:
    """Like ``parse_bundle``, but one PEM block that does not parse costs that block only:
    (the certificates that parsed, a problem per block that did not)."""
    if len(data) > MAX_INPUT_BYTES:
        raise CertificateFormatError(f"{len(data)} bytes is more than a certificate bundle")
    if b"-----BEGIN" not in data:
        return [parse_certificate(data)], []
    out, problems = [], []
    for i, match in enumerate(_PEM.finditer(data)):
        if i >= MAX_BUNDLE_CERTIFICATES:
            raise CertificateFormatError(f"more than {MAX_BUNDLE_CERTIFICATES} certificates")
        try:
            body = base64.b64decode(re.sub(rb"\s+", b"", match.group(1)), validate=True)
            out.append(parse_certificate(body))
        except (binascii.Error, ValueError):
            problems.append(f"PEM certificate {i + 1} is not base64")
        except CertificateFormatError as exc:
            problems.append(f"PEM certificate {i + 1}: {exc}")
    return out, problems


@dataclass(frozen=True, slots=True)
class TpmIdentity:
    """The TPM's manufacturer, model and version from the EK certificate's subjectAltName
    directoryName (EK Credential Profile §3.2.9): as trustworthy as the CA that signed it."""

    manufacturer: str | None = None
    model: str | None = None
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"manufacturer": self.manufacturer, "model": self.model, "version": self.version}


def tpm_identity(cert: ParsedCertificate) -> TpmIdentity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return TpmIdentity()
    values: dict[x509.ObjectIdentifier, str] = {}
    for name in san.get_values_for_type(x509.DirectoryName):
        for attr in name:
            if isinstance(attr.value, str):
                values.setdefault(attr.oid, attr.value)
    return TpmIdentity(
        values.get(TCG_AT_TPM_MANUFACTURER),
        values.get(TCG_AT_TPM_MODEL),
        values.get(TCG_AT_TPM_VERSION),
    )
