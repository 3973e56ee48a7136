"""REPORT_DATA: what the guest binds into its SNP report, under a versioned encoding (pure).

The guest asks the AMD-SP for a report whose 64-byte REPORT_DATA is, in encoding version 1:

    SHA-512( b"attest/snp/report-data" || 0x00 || 0x01            # domain, then the version
             || 0x01 || u32be(len(nonce)) || nonce                  # the verifier's challenge
            [|| 0x02 || u32be(len(tls_spki)) || tls_spki]           # guest TLS key, SPKI DER
             [|| 0x03 || u32be(len(vtpm_ak)) || vtpm_ak] )          # guest vTPM AK, when present

The TLS key is absent only when the guest serves no TLS (evidence over plain HTTP or its
operator socket); the vTPM AK (its TPM2B_PUBLIC as the evidence carries it) when the guest has
no vTPM. Every field is length-prefixed and tagged, in this fixed order, so no two inputs
encode alike (an absent field is not an empty one: its tag is missing),
and the domain string keeps the hash apart from any other SHA-512 the guest computes. The
verifier recomputes it from what it expects and compares all 64 bytes: anything else (a raw
nonce, another order, another version) is refused. A new encoding gets a new version byte;
``ENCODINGS`` lists those a verifier accepts.
"""

from __future__ import annotations

import hashlib
import hmac

from attest.errors import SnpCheckError
from attest.snp.findings import SnpCheck

DOMAIN = b"attest/snp/report-data\x00"
ENCODINGS = (1,)
MIN_NONCE, MAX_NONCE = 16, 64
MAX_FIELD = 16 * 1024


def _field(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + len(value).to_bytes(4, "big") + value


def encode_report_data(
    *, nonce: bytes, tls_spki: bytes | None, vtpm_ak: bytes | None = None, version: int = 1
) -> bytes:
    """The 64 bytes a guest puts in REPORT_DATA. Raises ``ValueError`` on bad arguments (a
    programming error of the caller, which chooses them)."""
    if version not in ENCODINGS:
        raise ValueError(f"unknown REPORT_DATA encoding {version}")
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise ValueError(f"a nonce is {MIN_NONCE}-{MAX_NONCE} bytes, got {len(nonce)}")
    for name, value in (("tls_spki", tls_spki), ("vtpm_ak", vtpm_ak)):
        if value is not None and not 0 < len(value) <= MAX_FIELD:
            raise ValueError(f"{name} must be 1-{MAX_FIELD} bytes")
    body = DOMAIN + bytes([version]) + _field(1, nonce)
    if tls_spki is not None:
        body += _field(2, tls_spki)
    if vtpm_ak is not None:
        body += _field(3, vtpm_ak)
    return hashlib.sha512(body).digest()


def verify_report_data(
    report_data: bytes, *, nonce: bytes, tls_spki: bytes | None, vtpm_ak: bytes | None = None
) -> int:
    """The encoding version under which ``report_data`` binds exactly these values, or raise
    ``SnpCheckError`` (check ``snp-report-data``)."""
    for version in ENCODINGS:
        want = encode_report_data(nonce=nonce, tls_spki=tls_spki, vtpm_ak=vtpm_ak, version=version)
        if hmac.compare_digest(want, report_data):
            return version
    what = ["nonce"] + ["TLS key"] * (tls_spki is not None) + ["vTPM AK"] * (vtpm_ak is not None)
    raise SnpCheckError(
        SnpCheck.REPORT_DATA,
        f"REPORT_DATA does not bind this {', '.join(what)} (encodings {ENCODINGS})",
    )
