"""The names of the SEV-SNP checks, and a finding that names one (attest.snp).

Every refusal (``SnpCheckError.check``) and every policy finding carries one of these names, so
the CLI's error line, the policy decision and the docs speak the same words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SnpCheck(enum.StrEnum):
    # verification: the report is what AMD hardware signed
    SIGNER = "snp-signer"  # SIGNING_KEY vs the leaf certificate (VCEK / VLEK)
    ROOT = "snp-root"  # the chain ends at a pinned AMD root
    CHAIN = "snp-chain"  # each link's RSA-PSS signature, names, CA flags
    VALIDITY = "snp-validity"  # every certificate valid at the caller's ``now``
    PRODUCT = "snp-product"  # CPUID product (v3+) == the chain's product
    SIGNATURE = "snp-signature"  # ECDSA P-384 over bytes 0x000-0x29F
    TCB = "snp-tcb"  # the leaf's TCB extensions == REPORTED_TCB
    CHIP_ID = "snp-chip-id"  # the VCEK's hwid == CHIP_ID
    REPORT_DATA = "snp-report-data"  # REPORT_DATA == what the verifier expects
    # policy: the report is what governance allows
    VERSION = "snp-version"
    TCB_FLOOR = "snp-tcb-floor"
    DEBUG = "snp-debug"
    MIGRATION_AGENT = "snp-migration-agent"
    SMT = "snp-smt"
    SINGLE_SOCKET = "snp-single-socket"
    VMPL = "snp-vmpl"
    ALLOWED_CHIP = "snp-allowed-chip"
    HOST_DATA = "snp-host-data"
    MEASUREMENT = "snp-measurement"
    RELEASE = "snp-release"  # the release named / matched is in the registry and blesses SNP
    RELEASE_REVOKED = "snp-release-revoked"
    PLATFORM = "snp-platform"  # the platform the verifier names is in the registry
    REVOKED = "snp-revoked"
    CRL_MISSING = "snp-crl-missing"
    CRL_STALE = "snp-crl-stale"
    CRL_INVALID = "snp-crl-invalid"


@dataclass(frozen=True)
class Finding:
    """One check's outcome worth reporting: a refusal or a warning, with the reason."""

    check: SnpCheck
    message: str
