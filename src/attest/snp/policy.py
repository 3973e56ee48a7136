"""SEV-SNP appraisal policy: a typed policy and its evaluation over a verified report (pure).

``SnpPolicy`` is what governance sets per release (the signed registry's ``snp`` section,
``attest.manifest.model.ReleaseSnp``; appraised with it by ``attest.manifest.snp``):
TCB floors per product, guest policy bits, VMPL, report version, optional chip allow-list,
HOST_DATA and launch measurements, and how a missing or stale CRL is treated.
``evaluate_snp_policy`` returns an ``SnpDecision``: every refusal and warning, each naming its
check, so an operator sees all that is wrong at once rather than the first thing.

Revocation: AMD's KDS publishes one CRL per product and key kind (``/vcek/v1/{product}/crl``,
``/vlek/v1/{product}/crl``), signed by the product's ARK with RSA-PSS/SHA-384, listing revoked
ASK / ASVK serials. ``verify_crl`` checks it against the chain's root; a VCEK or VLEK (serial
0, always) cannot be revoked by serial and is not looked up.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from attest.errors import SnpCheckError
from attest.snp.findings import Finding, SnpCheck
from attest.snp.report import Product, TcbVersion

if TYPE_CHECKING:  # the policy's types load without the X.509 machinery (attestd's start)
    from attest.snp.certs import UnverifiedCrl
    from attest.snp.verify import VerifiedChain, VerifiedReport


class CrlMissing(enum.Enum):
    """What a missing, stale or unverifiable CRL does to the decision."""

    REFUSE = "refuse"
    WARN = "warn"


@dataclass(frozen=True)
class SnpPolicy:
    min_tcb: Mapping[Product, TcbVersion] = field(default_factory=dict)  # no floor: unchecked
    min_report_version: int = 2
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    vmpl: int = 0
    allowed_chip_ids: frozenset[bytes] | None = None  # 64-byte CHIP_IDs; None: any chip
    expected_host_data: bytes | None = None  # e.g. the hash of the blessed release record
    allowed_measurements: frozenset[bytes] | None = None
    crl_missing: CrlMissing = CrlMissing.REFUSE


def _max_floor(a: TcbVersion, b: TcbVersion) -> TcbVersion:
    fmcs = [f for f in (a.fmc, b.fmc) if f is not None]
    return TcbVersion(
        bootloader=max(a.bootloader, b.bootloader),
        tee=max(a.tee, b.tee),
        snp=max(a.snp, b.snp),
        microcode=max(a.microcode, b.microcode),
        fmc=max(fmcs) if fmcs else None,
    )


def _both(a: frozenset[bytes] | None, b: frozenset[bytes] | None) -> frozenset[bytes] | None:
    """Both allow-lists (None: anything): the intersection when both give one."""
    if a is None or b is None:
        return b if a is None else a
    return a & b


def stricter(a: SnpPolicy, b: SnpPolicy) -> SnpPolicy:
    """The policy a report meets exactly when it meets both ``a`` and ``b`` (a release's and a
    platform's): per product the component-wise maximum of the TCB floors; a boolean allows
    only when both allow (``require_single_socket``: when either requires); the higher minimum
    report version; the intersection of allow-lists when both give one (an empty intersection
    allows nothing); a missing CRL refuses when either refuses. The VMPL is an equality check:
    two different VMPLs cannot both be met, and raise ``SnpCheckError`` (check ``snp-vmpl``)."""
    if a.vmpl != b.vmpl:
        raise SnpCheckError(
            SnpCheck.VMPL, f"the policies require different VMPLs ({a.vmpl} and {b.vmpl})"
        )
    floors = dict(a.min_tcb)
    for product, floor in b.min_tcb.items():
        floors[product] = floor if product not in floors else _max_floor(floors[product], floor)
    refuse = CrlMissing.REFUSE in (a.crl_missing, b.crl_missing)
    return SnpPolicy(
        min_tcb=dict(sorted(floors.items())),
        min_report_version=max(a.min_report_version, b.min_report_version),
        allow_debug=a.allow_debug and b.allow_debug,
        allow_migration_agent=a.allow_migration_agent and b.allow_migration_agent,
        allow_smt=a.allow_smt and b.allow_smt,
        require_single_socket=a.require_single_socket or b.require_single_socket,
        vmpl=a.vmpl,
        allowed_chip_ids=_both(a.allowed_chip_ids, b.allowed_chip_ids),
        expected_host_data=_host_data(a.expected_host_data, b.expected_host_data),
        allowed_measurements=_both(a.allowed_measurements, b.allowed_measurements),
        crl_missing=CrlMissing.REFUSE if refuse else CrlMissing.WARN,
    )


def _host_data(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is not None and b is not None and a != b:
        raise SnpCheckError(SnpCheck.HOST_DATA, "the policies expect different HOST_DATA")
    return b if a is None else a


@dataclass(frozen=True)
class VerifiedCrl:
    product: Product
    this_update: datetime
    next_update: datetime | None
    revoked: frozenset[int]


@dataclass(frozen=True)
class SnpDecision:
    refusals: tuple[Finding, ...]
    warnings: tuple[Finding, ...]

    @property
    def affirmed(self) -> bool:
        return not self.refusals


def verify_crl(crl: UnverifiedCrl, chain: VerifiedChain) -> VerifiedCrl | None:
    """The CRL when the chain's root signed it, else None (then it counts as missing)."""
    from attest.snp.certs import crl_signed_by

    if not crl_signed_by(crl, chain.root):
        return None
    c = crl.crl
    return VerifiedCrl(
        product=chain.product,
        this_update=c.last_update_utc,
        next_update=c.next_update_utc,
        revoked=frozenset(r.serial_number for r in c),
    )


def _guest_policy(vr: VerifiedReport, policy: SnpPolicy) -> list[Finding]:
    gp, out = vr.report.policy, []
    if gp.debug and not policy.allow_debug:
        out.append(Finding(SnpCheck.DEBUG, "the guest policy allows debugging (DEBUG=1)"))
    if gp.migrate_ma and not policy.allow_migration_agent:
        out.append(Finding(SnpCheck.MIGRATION_AGENT, "the guest policy allows a migration agent"))
    if gp.smt and not policy.allow_smt:
        out.append(Finding(SnpCheck.SMT, "the guest policy allows SMT"))
    if policy.require_single_socket and not gp.single_socket:
        out.append(Finding(SnpCheck.SINGLE_SOCKET, "the guest policy is not single-socket"))
    return out


def _identity(vr: VerifiedReport, policy: SnpPolicy) -> list[Finding]:
    r, out = vr.report, []
    if r.version < policy.min_report_version:
        msg = f"report version {r.version} < {policy.min_report_version}"
        out.append(Finding(SnpCheck.VERSION, msg))
    floor = policy.min_tcb.get(vr.product)
    if floor is not None and not vr.reported_tcb.at_least(floor):
        msg = f"REPORTED_TCB {vr.reported_tcb.as_dict()} is below the floor {floor.as_dict()}"
        out.append(Finding(SnpCheck.TCB_FLOOR, msg))
    if r.vmpl != policy.vmpl:
        out.append(Finding(SnpCheck.VMPL, f"VMPL {r.vmpl}, expected {policy.vmpl}"))
    if policy.allowed_chip_ids is not None and r.chip_id not in policy.allowed_chip_ids:
        msg = f"CHIP_ID {r.chip_id.hex()[:16]}... is not allowed"
        out.append(Finding(SnpCheck.ALLOWED_CHIP, msg))
    if policy.expected_host_data is not None and r.host_data != policy.expected_host_data:
        out.append(Finding(SnpCheck.HOST_DATA, f"HOST_DATA {r.host_data.hex()} is not expected"))
    if policy.allowed_measurements is not None and r.measurement not in policy.allowed_measurements:
        msg = f"MEASUREMENT {r.measurement.hex()} is not blessed"
        out.append(Finding(SnpCheck.MEASUREMENT, msg))
    return out


def _revocation(
    vr: VerifiedReport, crl: VerifiedCrl | None, now: datetime
) -> tuple[list[Finding], list[Finding]]:
    """(refusals, soft findings): a revoked certificate always refuses; a missing, stale or
    foreign CRL is soft (the policy says refuse or warn)."""
    if crl is None:
        return [], [Finding(SnpCheck.CRL_MISSING, f"no verified CRL for {vr.product}")]
    if crl.product is not vr.product:
        return [], [Finding(SnpCheck.CRL_INVALID, f"the CRL is {crl.product}'s")]
    soft = []
    if crl.this_update > now:
        soft.append(Finding(SnpCheck.CRL_INVALID, f"the CRL is dated {crl.this_update:%Y-%m-%d}"))
    if crl.next_update is None or crl.next_update < now:
        due = "never" if crl.next_update is None else f"{crl.next_update:%Y-%m-%d}"
        soft.append(Finding(SnpCheck.CRL_STALE, f"the CRL's next update was due {due}"))
    hard = []
    for role, cert in (("intermediate", vr.chain.intermediate), ("leaf", vr.chain.leaf)):
        if cert.serial != 0 and cert.serial in crl.revoked:
            msg = f"the {role} {cert.subject_cn!r} (serial 0x{cert.serial:x}) is revoked"
            hard.append(Finding(SnpCheck.REVOKED, msg))
    return hard, soft


def evaluate_snp_policy(
    vr: VerifiedReport, policy: SnpPolicy, *, crl: VerifiedCrl | None, now: datetime
) -> SnpDecision:
    """Every policy check over a verified report; see the module docstring."""
    refusals = _identity(vr, policy) + _guest_policy(vr, policy)
    revoked, soft = _revocation(vr, crl, now)
    refusals += revoked
    warnings: list[Finding] = []
    (refusals if policy.crl_missing is CrlMissing.REFUSE else warnings).extend(soft)
    return SnpDecision(refusals=tuple(refusals), warnings=tuple(warnings))
