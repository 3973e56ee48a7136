"""Verify an SEV-SNP attestation report: chain to a pinned AMD root, signature, consistency.

Order (SEV-SNP ABI §7.3, KDS spec ch. 2-3): the leaf's chain to an ARK the caller presents,
link by link (``verify_chain``), where the ARK must be self-signed and its key's SHA-256 the
one pinned for its product (``attest.snp.roots``); every certificate valid at ``now``; the
report's SIGNING_KEY names the leaf's kind (VCEK under an ASK, VLEK under an ASVK); the
product from the report's CPUID fields (v3+) equals the chain's (a v2 report takes the
chain's); ECDSA P-384/SHA-384 over bytes 0x000-0x29F; the leaf's TCB extensions equal
REPORTED_TCB (not CURRENT_TCB); a VCEK's hwid equals CHIP_ID (Turin: 8 bytes, CHIP_ID
zero-padded to 64). Each failure raises ``SnpCheckError`` naming the check
(``attest.snp.findings.SnpCheck``).

Policy (TCB floors, guest policy bits, VMPL, chip allow-list, HOST_DATA, revocation) is
``attest.snp.policy``; this module only establishes what the hardware signed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import SnpCheckError, SnpFormatError
from attest.snp.certs import (
    AmdCertificate,
    KdsExtensions,
    is_ca,
    kds_extensions,
    load_certificate,
    load_certificates,
    signed_by,
    spki_sha256,
    valid_at,
)
from attest.snp.findings import SnpCheck
from attest.snp.report import (
    Product,
    Signer,
    TcbVersion,
    UnverifiedReport,
    parse_report,
)
from attest.snp.roots import AMD_ARK_PINS, ArkPins

_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


@dataclass(frozen=True)
class VerifiedChain:
    """A leaf that chains to a trust anchor; its validity is re-checked at each use."""

    product: Product
    signer: Signer  # VCEK (under the ASK) or VLEK (under the ASVK)
    leaf: AmdCertificate
    intermediate: AmdCertificate
    root: AmdCertificate
    leaf_key: ec.EllipticCurvePublicKey
    extensions: KdsExtensions

    def check_validity(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        for role, cert in (("leaf", self.leaf), ("ASK", self.intermediate), ("ARK", self.root)):
            if not valid_at(cert, now):
                x = cert.x509
                raise SnpCheckError(
                    SnpCheck.VALIDITY,
                    f"the {role} {cert.subject_cn!r} is valid {x.not_valid_before_utc:%Y-%m-%d}"
                    f"..{x.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%dT%H:%M:%SZ}",
                )


def _split(
    certs: Sequence[AmdCertificate], pins: ArkPins
) -> tuple[list[AmdCertificate], list[tuple[Product, AmdCertificate]]]:
    """(intermediates, ARKs) of the presented certificates. Every self-issued one must be a
    pinned ARK: its key's SHA-256 pinned for a product, its self-signature valid, a CA."""
    intermediates: list[AmdCertificate] = []
    arks: list[tuple[Product, AmdCertificate]] = []
    for cert in certs:
        if not cert.self_issued:
            intermediates.append(cert)
            continue
        product = pins.product_of(spki_sha256(cert))
        if product is None:
            raise SnpCheckError(
                SnpCheck.ROOT,
                f"the chain carries a root {cert.subject_cn!r} that is not a pinned AMD ARK",
            )
        if not signed_by(cert, cert) or not is_ca(cert):
            raise SnpCheckError(
                SnpCheck.ROOT,
                f"{cert.subject_cn!r} has {product}'s pinned ARK key but is not a self-signed "
                "CA certificate",
            )
        arks.append((product, cert))
    return intermediates, arks


def _leaf_kind(leaf: AmdCertificate, ext: KdsExtensions, intermediate: AmdCertificate) -> Signer:
    product_cn = intermediate.subject_cn  # authenticated: the ARK signed it
    if product_cn.startswith("SEV-VLEK-"):
        kind, want_cn = Signer.VLEK, "SEV-VLEK"
    elif product_cn.startswith("SEV-"):
        kind, want_cn = Signer.VCEK, "SEV-VCEK"
    else:
        raise SnpCheckError(SnpCheck.CHAIN, f"{product_cn!r} is neither an ASK nor an ASVK")
    if leaf.subject_cn != want_cn:
        raise SnpCheckError(SnpCheck.SIGNER, f"a {want_cn} leaf is expected under {product_cn!r}")
    if kind is Signer.VCEK and (ext.hwid is None or ext.csp_id is not None):
        raise SnpCheckError(SnpCheck.SIGNER, "the VCEK has no hwid extension (or a csp_id)")
    if kind is Signer.VLEK and (ext.csp_id is None or ext.hwid is not None):
        raise SnpCheckError(SnpCheck.SIGNER, "the VLEK has no csp_id extension (or a hwid)")
    return kind


def _find_root(
    intermediate: AmdCertificate, arks: Sequence[tuple[Product, AmdCertificate]]
) -> tuple[Product, AmdCertificate]:
    if not arks:
        raise SnpCheckError(
            SnpCheck.ROOT,
            f"no AMD ARK was presented: include {intermediate.issuer_cn!r} in the chain (AMD's "
            "KDS cert_chain holds the ASK and the ARK) or among the operator's AMD certificates",
        )
    for product, ark in arks:
        if intermediate.x509.issuer == ark.x509.subject and signed_by(intermediate, ark):
            return product, ark
    raise SnpCheckError(
        SnpCheck.ROOT,
        f"{intermediate.subject_cn!r} (issued by {intermediate.issuer_cn!r}) is not signed by "
        "a pinned AMD root",
    )


def _name(name: x509.Name) -> str:
    """A certificate name for an error line: its RFC 4514 form, or that it is empty."""
    text = name.rfc4514_string()
    return repr(text[:200]) if text else "an empty name"


def verify_chain(
    leaf: AmdCertificate,
    certs: Sequence[AmdCertificate] = (),
    *,
    now: datetime,
    pins: ArkPins = AMD_ARK_PINS,
    product: Product | None = None,
) -> VerifiedChain:
    """Verify leaf <- ASK/ASVK <- ARK, one RSA-PSS signature at a time. ``certs`` are the
    presented certificates (the ASK or ASVK and the ARK; others are ignored unless they are
    roots, which must all be pinned); ``pins`` the ARK keys trusted per product. ``product`` is
    what the report says (v3+ CPUID); the chain must be that product's."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    key = leaf.x509.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SnpCheckError(SnpCheck.CHAIN, "the leaf's key is not ECDSA P-384")
    intermediates, arks = _split(certs, pins)
    if not intermediates:
        raise SnpCheckError(SnpCheck.CHAIN, "no ASK or ASVK was presented to verify the leaf")
    issuer = next(
        (c for c in intermediates if leaf.x509.issuer == c.x509.subject and signed_by(leaf, c)),
        None,
    )
    if issuer is None:
        names = ", ".join(sorted({_name(c.x509.subject) for c in intermediates}))
        raise SnpCheckError(
            SnpCheck.CHAIN,
            f"the leaf (issuer {_name(leaf.x509.issuer)}) is not signed by any ASK or ASVK "
            f"presented ({names})",
        )
    arks.sort(key=lambda pa: not valid_at(pa[1], now))  # an ARK valid at now first
    root_product, root = _find_root(issuer, arks)
    if not is_ca(issuer):
        raise SnpCheckError(SnpCheck.CHAIN, f"{issuer.subject_cn!r} is not a CA certificate")
    ext = kds_extensions(leaf)
    signer = _leaf_kind(leaf, ext, issuer)
    if product is not None and product is not root_product:
        raise SnpCheckError(
            SnpCheck.PRODUCT,
            f"the report's CPUID names {product} but the chain is {root_product}'s",
        )
    if ext.product_name is not None and ext.product_name.split("-")[0] != root_product:
        raise SnpCheckError(
            SnpCheck.PRODUCT,
            f"the leaf names product {ext.product_name!r} under {root_product}'s root",
        )
    chain = VerifiedChain(root_product, signer, leaf, issuer, root, key, ext)
    chain.check_validity(now)
    return chain


@dataclass(frozen=True)
class VerifiedReport:
    """A report the hardware signed, with the product, signer and TCB it was signed at."""

    report: UnverifiedReport
    chain: VerifiedChain
    reported_tcb: TcbVersion

    @property
    def product(self) -> Product:
        return self.chain.product

    @property
    def signer(self) -> Signer:
        return self.chain.signer


def _check_tcb(report: UnverifiedReport, chain: VerifiedChain) -> TcbVersion:
    product = chain.product
    reported = TcbVersion.decode(report.reported_tcb, product)
    if reported.encode(product) != report.reported_tcb:
        raise SnpCheckError(SnpCheck.TCB, "REPORTED_TCB has non-zero reserved bytes")
    certified = chain.extensions.tcb(product)
    if reported != certified:
        raise SnpCheckError(
            SnpCheck.TCB,
            f"REPORTED_TCB {reported.as_dict()} is not the leaf's TCB {certified.as_dict()}",
        )
    return reported


def _check_chip_id(report: UnverifiedReport, chain: VerifiedChain) -> None:
    hwid = chain.extensions.hwid
    if chain.signer is not Signer.VCEK or hwid is None:
        return  # a VLEK names no chip
    if report.mask_chip_key or not any(report.chip_id):
        raise SnpCheckError(SnpCheck.CHIP_ID, "CHIP_ID is masked: the VCEK cannot be bound")
    if report.chip_id != hwid.ljust(len(report.chip_id), b"\0"):
        raise SnpCheckError(
            SnpCheck.CHIP_ID, f"CHIP_ID is not the VCEK's hwid {hwid.hex()[:16]}..."
        )


def verify_report(
    report: UnverifiedReport, chain: VerifiedChain, *, now: datetime
) -> VerifiedReport:
    """Verify a parsed report against a verified chain. Raises ``SnpCheckError``."""
    if report.signer is not chain.signer:
        raise SnpCheckError(
            SnpCheck.SIGNER,
            f"SIGNING_KEY says {report.signer.name} but the leaf is a {chain.signer.name}",
        )
    cpuid_product = report.cpuid_product
    if report.cpuid is not None and cpuid_product is None:
        raise SnpCheckError(SnpCheck.PRODUCT, f"unknown CPUID family/model {report.cpuid[:2]}")
    if cpuid_product is not None and cpuid_product is not chain.product:
        raise SnpCheckError(
            SnpCheck.PRODUCT,
            f"the report's CPUID names {cpuid_product} but the chain is {chain.product}'s",
        )
    if report.version < 3 and chain.product.fmc_in_tcb:
        raise SnpCheckError(SnpCheck.PRODUCT, f"a version 2 report from {chain.product}")
    chain.check_validity(now)
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        chain.leaf_key.verify(signature, report.signed_bytes, _ECDSA_SHA384)
    except InvalidSignature:
        raise SnpCheckError(
            SnpCheck.SIGNATURE, f"the report is not signed by this {chain.signer.name}"
        ) from None
    reported = _check_tcb(report, chain)
    _check_chip_id(report, chain)
    return VerifiedReport(report=report, chain=chain, reported_tcb=reported)


class SnpVerifier:
    """Verifies reports from bytes, keeping each verified chain (keyed by its certificates'
    bytes, at most ``max_chains``) so a repeat costs one ECDSA verify.

    ``pins``: the ARK keys trusted per product (AMD's by default). ``amd_certs``: certificates
    the operator supplies once (each product's ARK, optionally its ASK / ASVK, e.g. AMD's
    cert_chain files), offered with every report's own; they are trusted only as far as they
    chain to a pinned ARK."""

    def __init__(
        self,
        *,
        pins: ArkPins = AMD_ARK_PINS,
        amd_certs: Sequence[AmdCertificate] = (),
        max_chains: int = 256,
    ) -> None:
        self._pins = pins
        self._amd_certs = tuple(amd_certs)
        self._chains: OrderedDict[tuple[bytes, bytes], VerifiedChain] = OrderedDict()
        self._max = max_chains

    def chain(
        self, leaf: bytes, intermediates: bytes = b"", *, now: datetime, product: Product | None
    ) -> VerifiedChain:
        """The chain of ``leaf`` over ``intermediates`` (a PEM bundle: the ASK or ASVK and,
        unless ``amd_certs`` has it, the ARK), verified once and then taken from the cache."""
        key = (bytes(leaf), bytes(intermediates))
        chain = self._chains.get(key)
        if chain is None:
            certs = load_certificates(intermediates) if intermediates else []
            chain = verify_chain(
                load_certificate(leaf),
                [*certs, *self._amd_certs],
                now=now,
                pins=self._pins,
                product=product,
            )
            self._chains[key] = chain
            while len(self._chains) > self._max:
                self._chains.popitem(last=False)
        return chain

    def verify(
        self,
        report: bytes,
        *,
        leaf: bytes,
        intermediates: bytes = b"",
        now: datetime,
        expected_report_data: bytes | None = None,
    ) -> VerifiedReport:
        """Parse, verify and (when given) compare REPORT_DATA byte for byte."""
        parsed = parse_report(report)
        chain = self.chain(leaf, intermediates, now=now, product=parsed.cpuid_product)
        verified = verify_report(parsed, chain, now=now)
        if expected_report_data is not None:
            if len(expected_report_data) != len(parsed.report_data):
                raise SnpFormatError("the expected REPORT_DATA must be 64 bytes")
            if parsed.report_data != expected_report_data:
                raise SnpCheckError(SnpCheck.REPORT_DATA, "REPORT_DATA is not the expected one")
        return verified
