"""Verify an EK certificate's chain to a configured trust anchor (RFC 5280 §6, strictly).

The reader (``attest.ekcert.parse``) tolerates what vendors ship; nothing here is tolerant:

- every signature is checked over the *original* to-be-signed bytes with the issuer's key
  (RSA PKCS#1 v1.5 or PSS, ECDSA; SHA-256/384/512 only; RSA keys of 2048 bits or more, NIST
  P-256/384/521 curves), and the outer signatureAlgorithm must equal the signed one (§4.1.1.2);
- every certificate on the path, the anchor included, must be valid at the caller's ``now``;
- names chain (issuer = subject of the next certificate) and, where both are present, the
  authorityKeyIdentifier matches the issuer's subjectKeyIdentifier (§4.2.1.1);
- every issuer is a CA: basicConstraints cA TRUE, keyUsage keyCertSign (present on
  intermediates; if present on an anchor), pathLenConstraint honoured (§6.1.4 (k)-(n));
- a critical extension this module does not understand fails the path (§4.2);
- the EK certificate is an end-entity certificate for an EK (EK Credential Profile §3.2): not a
  CA, no certificate signing, an extendedKeyUsage (if any) containing tcg-kp-EKCertificate.

Trust anchors are the certificates the caller configures; one need not be self-signed (vendors
publish CAs whose issuer they do not publish). Intermediates are untrusted path-building help.
No network: a missing issuer is reported with the URL its authorityInfoAccess names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from attest.ekcert.der import Tolerated
from attest.ekcert.parse import (
    TCG_KP_EK_CERTIFICATE,
    ParsedCertificate,
    TpmIdentity,
    from_cryptography,
    tpm_identity,
)
from attest.errors import CertificateError

logger = logging.getLogger(__name__)

#: Intermediates accepted between the EK certificate and its trust anchor.
MAX_INTERMEDIATES = 3
#: Candidate paths tried before giving up (bounds the search over a large CA store).
MAX_CANDIDATE_PATHS = 64
MIN_RSA_BITS = 2048
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

#: Critical extensions whose meaning is enforced here, or that restrict nothing attest relies on:
#: certificatePolicies (vendors mark it critical on intermediates; RFC 5280 §4.2.1.4 allows it;
#: attest requires no particular policy), policyConstraints / inhibitAnyPolicy (likewise: no
#: policy is required, so no policy processing can fail), subjectDirectoryAttributes (the TCG
#: TPM specification and security assertions), the key identifiers, and subjectAltName (the TCG
#: TPM identity). nameConstraints is not among them: it is not enforced, so it is refused.
UNDERSTOOD_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.INHIBIT_ANY_POLICY,
        ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    }
)

Cert = ParsedCertificate | x509.Certificate
E = TypeVar("E", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """An EK certificate whose chain to a configured anchor verified at ``verified_at``.

    ``chain`` runs from the EK certificate to the anchor. ``deviations`` names, per
    certificate on the path, every departure from DER the reader tolerated."""

    chain: tuple[ParsedCertificate, ...]
    verified_at: datetime
    deviations: tuple[tuple[str, Tolerated], ...]
    identity: TpmIdentity

    @property
    def certificate(self) -> ParsedCertificate:
        return self.chain[0]

    def describe(self) -> dict[str, Any]:
        """The result as JSON-ready data (``attest ek verify --json``)."""
        return {
            "verified_at": self.verified_at.isoformat(),
            "chain": [
                {
                    "subject": c.subject.rfc4514_string(),
                    "issuer": c.issuer.rfc4514_string(),
                    "serial": f"{c.serial_number:x}",
                    "sha256": c.sha256.hex(),
                    "not_after": c.not_valid_after_utc.isoformat(),
                }
                for c in self.chain
            ],
            "tpm": self.identity.as_dict(),
            "deviations": [
                {"certificate": who, "deviation": t.deviation.value, "where": t.detail}
                for who, t in self.deviations
            ],
        }


def as_parsed(cert: Cert) -> ParsedCertificate:
    return cert if isinstance(cert, ParsedCertificate) else from_cryptography(cert)


def _ext(cert: ParsedCertificate, kind: type[E]) -> E | None:
    try:
        value: E = cert.extensions.get_extension_for_class(kind).value
        return value
    except x509.ExtensionNotFound:
        return None


def _fail(message: str, reason: str) -> CertificateError:
    return CertificateError(message, reason=reason)


def _key_id_mismatch(child: ParsedCertificate, issuer: ParsedCertificate) -> bool:
    """RFC 5280 §4.2.1.1: when both are present, AKI keyIdentifier names the issuer's SKI."""
    aki = _ext(child, x509.AuthorityKeyIdentifier)
    ski = _ext(issuer, x509.SubjectKeyIdentifier)
    if aki is None or aki.key_identifier is None or ski is None:
        return False
    return aki.key_identifier != ski.digest


def _candidate_paths(
    leaf: ParsedCertificate,
    anchors: Sequence[ParsedCertificate],
    intermediates: Sequence[ParsedCertificate],
) -> Iterator[list[ParsedCertificate]]:
    """Paths leaf -> ... -> anchor whose names (and key identifiers) chain, shortest first."""
    frontier = [[leaf]]
    tried = 0
    while frontier:
        next_frontier = []
        for path in frontier:
            last = path[-1]
            for anchor in anchors:
                if anchor.subject == last.issuer and not _key_id_mismatch(last, anchor):
                    tried += 1
                    if tried > MAX_CANDIDATE_PATHS:
                        return
                    yield [*path, anchor]
            if len(path) - 1 < MAX_INTERMEDIATES:
                for inter in intermediates:
                    if (
                        inter.subject == last.issuer
                        and inter not in path
                        and inter not in anchors
                        and not _key_id_mismatch(last, inter)
                    ):
                        next_frontier.append([*path, inter])
        frontier = next_frontier


def _check_validity(cert: ParsedCertificate, now: datetime) -> None:
    # RFC 5280 §6.1.3 (a)(2)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _fail(
            f"certificate {cert.describe()} is not valid at validation time {now.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()})",
            "validity",
        )


def _check_critical(cert: ParsedCertificate) -> None:
    # RFC 5280 §4.2 / §6.1.4 (o)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in UNDERSTOOD_CRITICAL:
            raise _fail(
                f"certificate {cert.describe()} has an unrecognised critical extension "
                f"{ext.oid.dotted_string}",
                "critical-extension",
            )


def _check_end_entity(cert: ParsedCertificate) -> None:
    """EK Credential Profile §3.2: an EK certificate certifies a decryption key."""
    bc = _ext(cert, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise _fail(f"EK certificate {cert.describe()} is a CA certificate", "ek-profile")
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and (ku.key_cert_sign or ku.crl_sign):
        raise _fail(f"EK certificate {cert.describe()} allows certificate signing", "ek-profile")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is not None and TCG_KP_EK_CERTIFICATE not in eku:
        raise _fail(
            f"EK certificate {cert.describe()} has an extendedKeyUsage without "
            f"tcg-kp-EKCertificate ({TCG_KP_EK_CERTIFICATE.dotted_string})",
            "ek-profile",
        )


def _check_ca(cert: ParsedCertificate, below: int, *, anchor: bool) -> None:
    """RFC 5280 §6.1.4 (k)-(n): ``below`` counts the non-self-issued intermediates under it."""
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise _fail(
            f"issuer {cert.describe()} is not a CA (basicConstraints cA=false)", "ca-constraints"
        )
    if bc.path_length is not None and below > bc.path_length:
        raise _fail(
            f"path length constraint of {cert.describe()} ({bc.path_length}) exceeded: "
            f"{below} intermediate(s) below it",
            "ca-constraints",
        )
    ku = _ext(cert, x509.KeyUsage)
    if (ku is None and not anchor) or (ku is not None and not ku.key_cert_sign):
        raise _fail(f"issuer {cert.describe()} lacks keyUsage keyCertSign", "ca-constraints")


def _check_signature(child: ParsedCertificate, issuer: ParsedCertificate) -> None:
    """RFC 5280 §6.1.3 (a)(1), over the bytes as signed (``child.tbs``)."""
    where = f"{child.describe()} by {issuer.describe()}"
    if child.signature_algorithm != child.tbs_signature_algorithm:
        raise _fail(f"the signature algorithms of {where} differ", "signature-algorithm")
    cert = child.decoded
    try:
        digest = cert.signature_hash_algorithm
        params = cert.signature_algorithm_parameters
    except UnsupportedAlgorithm:
        raise _fail(
            f"the signature algorithm on {where} is not supported", "signature-algorithm"
        ) from None
    if not isinstance(digest, _HASHES):
        name = digest.name if digest is not None else "none"
        raise _fail(f"the {name} signature on {where} is not accepted", "signature-algorithm")
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise _fail(f"RSA-{key.key_size} key of {where} is too short", "issuer-key")
            if not isinstance(params, padding.PKCS1v15 | padding.PSS):
                raise _fail(f"signature on {where} is not an RSA signature", "signature")
            key.verify(cert.signature, child.tbs, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, _CURVES):
                raise _fail(f"curve {key.curve.name} of {where} is not accepted", "issuer-key")
            if not isinstance(params, ec.ECDSA):
                raise _fail(f"signature on {where} is not an ECDSA signature", "signature")
            key.verify(cert.signature, child.tbs, params)
        else:
            raise _fail(f"the key type of {where} is not supported", "issuer-key")
    except InvalidSignature:
        raise _fail(f"the signature on {where} does not verify", "signature") from None


def _check_path(path: list[ParsedCertificate], now: datetime) -> None:
    """RFC 5280 §6.1, from the anchor down to the EK certificate."""
    anchor = path[-1]
    _check_validity(anchor, now)
    _check_critical(anchor)
    below = sum(1 for c in path[1:-1] if not c.self_issued)
    _check_ca(anchor, below, anchor=True)
    for i in range(len(path) - 2, -1, -1):
        cert = path[i]
        _check_signature(cert, path[i + 1])
        _check_validity(cert, now)
        _check_critical(cert)
        if i == 0:
            _check_end_entity(cert)
        else:
            below = sum(1 for c in path[1:i] if not c.self_issued)
            _check_ca(cert, below, anchor=False)


def _no_issuer(leaf: ParsedCertificate) -> str:
    aia = _ext(leaf, x509.AuthorityInformationAccess)
    urls = [
        d.access_location.value
        for d in (aia or [])
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]
    hint = f"; its authorityInfoAccess names {', '.join(urls)}" if urls else ""
    return f"no chain from issuer {leaf.issuer.rfc4514_string()!r} to a configured root{hint}"


def verify_ek_chain(
    leaf: ParsedCertificate,
    *,
    anchors: Sequence[Cert],
    intermediates: Sequence[Cert] = (),
    now: datetime,
) -> VerifiedChain:
    """Verify that ``leaf`` is an EK certificate chaining to one of ``anchors`` at ``now``.

    Raises ``CertificateError`` (``reason`` names the failed check) naming the certificate."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not anchors:
        raise _fail("no trusted EK roots are configured", "no-roots")
    now = now.astimezone(UTC)
    trusted = [as_parsed(a) for a in anchors]
    helpers = [as_parsed(c) for c in intermediates]
    failures: list[CertificateError] = []
    for path in _candidate_paths(leaf, trusted, helpers):
        try:
            _check_path(path, now)
        except CertificateError as exc:
            failures.append(exc)
            continue
        deviations = tuple((c.describe(), t) for c in path for t in c.deviations)
        logger.info(
            "EK certificate verified",
            extra={
                "issuer": leaf.issuer.rfc4514_string(),
                "anchor": path[-1].subject.rfc4514_string(),
                "depth": len(path),
                "deviations": [t.deviation.value for _, t in deviations],
            },
        )
        return VerifiedChain(tuple(path), now, deviations, tpm_identity(leaf))
    first = failures[0] if failures else _fail(_no_issuer(leaf), "no-path")
    raise _fail(
        f"EK certificate {leaf.describe()} does not verify against the configured roots at "
        f"{now.isoformat()}: {first}",
        first.reason,
    )
