"""``attest manifest bless --snp-*`` and ``attest manifest snp-launch``: a release's SEV-SNP launch
measurements, computed offline with sev-snp-measure (``attest.cli.snp.launch_measurement``), and
its SNP policy. See docs/snp.md ("Blessing launch measurements").
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from attest.cli.snp import launch_measurement
from attest.errors import ConfigError
from attest.manifest.model import SnpLaunch
from attest.manifest.parse import MAX_SNP_VCPUS, MAX_SNP_VMPL, is_name
from attest.snp.policy import CrlMissing, SnpPolicy
from attest.snp.report import SUPPORTED_VERSIONS, Product, TcbVersion

ROOTHASH = "{roothash}"  # replaced in --snp-cmdline by the release's dm-verity root hash (hex)
DEFAULT_SLOT = "default"
_POLICY_FLAGS = (
    "snp_min_tcb",
    "snp_min_report_version",
    "snp_allow_migration_agent",
    "snp_no_smt",
    "snp_single_socket",
    "snp_vmpl",
    "snp_chip_id",
    "snp_crl_missing",
    "snp_bind_host_data",
)


def add_launch_arguments(sp: argparse.ArgumentParser, *, required: bool) -> None:
    g = sp.add_argument_group("SEV-SNP launch (a confidential guest of this release)")
    g.add_argument(
        "--snp-ovmf", type=Path, required=required, help="the release's OVMF (AmdSev build)"
    )
    g.add_argument("--snp-kernel", type=Path, help="the kernel QEMU passes (-kernel)")
    g.add_argument("--snp-initrd", type=Path, help="the initrd (with --snp-kernel)")
    g.add_argument(
        "--snp-cmdline",
        help=f"the kernel command line (with --snp-kernel); {ROOTHASH} is replaced by the "
        "release's dm-verity root hash",
    )
    g.add_argument("--snp-vcpus", type=int, required=required, help="number of vCPUs")
    g.add_argument("--snp-vcpu-type", required=required, help="e.g. EPYC-v4, EPYC-Milan")
    g.add_argument(
        "--snp-slot",
        default=DEFAULT_SLOT,
        help=f"the boot variant (A/B slot) this launch is (default: {DEFAULT_SLOT})",
    )


def add_policy_arguments(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("SEV-SNP policy of the release's guests (debug is always refused)")
    g.add_argument(
        "--snp-min-tcb",
        action="append",
        metavar="PRODUCT=BL.TEE.SNP.UCODE[.FMC]",
        help="a TCB floor, e.g. Milan=3.0.8.115 (repeat per product; FMC: Turin only)",
    )
    g.add_argument("--snp-min-report-version", type=int, help="lowest report version (2)")
    g.add_argument("--snp-allow-migration-agent", action="store_true", default=None)
    g.add_argument("--snp-no-smt", action="store_true", default=None, help="refuse SMT guests")
    g.add_argument(
        "--snp-single-socket", action="store_true", default=None, help="require SINGLE_SOCKET"
    )
    g.add_argument("--snp-vmpl", type=int, help="the VMPL reports must come from (0)")
    g.add_argument(
        "--snp-chip-id", action="append", metavar="HEX", help="an allowed CHIP_ID (repeat)"
    )
    g.add_argument(
        "--snp-crl-missing",
        choices=[c.value for c in CrlMissing],
        help="a missing or stale AMD CRL: refuse (default) or warn",
    )
    g.add_argument(
        "--snp-bind-host-data",
        action="store_true",
        default=None,
        help="HOST_DATA must be sha256 of the release's host-data record",
    )


def _sha256_file(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def snp_launch(args: argparse.Namespace, *, root_hash: bytes) -> SnpLaunch | None:
    """The launch the ``--snp-*`` arguments describe, measured (None when no --snp-ovmf)."""
    if args.snp_ovmf is None:
        given = [a for a in ("snp_kernel", "snp_initrd", "snp_cmdline") if getattr(args, a)]
        if given or args.snp_vcpus is not None or args.snp_vcpu_type is not None:
            raise ConfigError("an SNP launch needs --snp-ovmf", key="--snp-ovmf")
        return None
    if args.snp_vcpus is None or args.snp_vcpu_type is None:
        raise ConfigError("an SNP launch needs --snp-vcpus and --snp-vcpu-type", key="--snp-vcpus")
    if not 1 <= args.snp_vcpus <= MAX_SNP_VCPUS:
        raise ConfigError(f"at least one vCPU, at most {MAX_SNP_VCPUS}", key="--snp-vcpus")
    if not is_name(args.snp_slot):
        raise ConfigError("a slot name is 1-64 characters [A-Za-z0-9._+~-]", key="--snp-slot")
    if args.snp_kernel is None and (args.snp_initrd is not None or args.snp_cmdline is not None):
        raise ConfigError("--snp-initrd and --snp-cmdline need --snp-kernel", key="--snp-kernel")
    cmdline = args.snp_cmdline
    if cmdline is not None:
        cmdline = cmdline.replace(ROOTHASH, root_hash.hex())
    measurement = launch_measurement(
        ovmf=args.snp_ovmf,
        vcpus=args.snp_vcpus,
        vcpu_type=args.snp_vcpu_type,
        kernel=args.snp_kernel,
        initrd=args.snp_initrd,
        append=cmdline,
        flags="--snp-",
    )
    return SnpLaunch(
        slot=args.snp_slot,
        measurement=measurement,
        vcpus=args.snp_vcpus,
        vcpu_type=args.snp_vcpu_type,
        ovmf_sha256=_sha256_file(args.snp_ovmf),
        kernel_sha256=None if args.snp_kernel is None else _sha256_file(args.snp_kernel),
        initrd_sha256=None if args.snp_initrd is None else _sha256_file(args.snp_initrd),
        cmdline_sha256=None if cmdline is None else hashlib.sha256(cmdline.encode()).digest(),
    )


def _tcb_floor(item: str) -> tuple[Product, TcbVersion]:
    name, sep, value = item.partition("=")
    key = "--snp-min-tcb"
    try:
        product = Product(name)
    except ValueError:
        known = ", ".join(p.value for p in Product)
        raise ConfigError(f"{name!r} is not one of {known}", key=key) from None
    parts = value.split(".")
    want = "BL.TEE.SNP.UCODE[.FMC]" if product.fmc_in_tcb else "BL.TEE.SNP.UCODE"
    if not sep or len(parts) not in ((4, 5) if product.fmc_in_tcb else (4,)):
        raise ConfigError(f"expected {name}={want}, got {item!r}", key=key)
    if not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts):
        raise ConfigError(f"security patch levels are 0-255, got {item!r}", key=key)
    spl = [int(p) for p in parts]
    fmc = spl[4] if len(spl) == 5 else None
    return product, TcbVersion(bootloader=spl[0], tee=spl[1], snp=spl[2], microcode=spl[3], fmc=fmc)


def snp_policy(args: argparse.Namespace) -> tuple[SnpPolicy, bool] | None:
    """(policy, bind HOST_DATA) from the ``--snp-*`` policy flags; None when none is given
    (then a new SNP section takes the defaults and an existing one is kept)."""
    if all(getattr(args, f) is None for f in _POLICY_FLAGS):
        return None
    floors: dict[Product, TcbVersion] = {}
    for item in args.snp_min_tcb or []:
        product, floor = _tcb_floor(item)
        if product in floors:
            raise ConfigError(f"{product} has two floors", key="--snp-min-tcb")
        floors[product] = floor
    version = 2 if args.snp_min_report_version is None else args.snp_min_report_version
    if not min(SUPPORTED_VERSIONS) <= version <= max(SUPPORTED_VERSIONS):
        raise ConfigError(
            f"report versions are {min(SUPPORTED_VERSIONS)}-{max(SUPPORTED_VERSIONS)}",
            key="--snp-min-report-version",
        )
    vmpl = 0 if args.snp_vmpl is None else args.snp_vmpl
    if not 0 <= vmpl <= MAX_SNP_VMPL:
        raise ConfigError(f"a VMPL is 0-{MAX_SNP_VMPL}", key="--snp-vmpl")
    chips: frozenset[bytes] | None = None
    if args.snp_chip_id:
        try:
            ids = [bytes.fromhex(c) for c in args.snp_chip_id]
        except ValueError:
            raise ConfigError("a CHIP_ID is 64 bytes of hex", key="--snp-chip-id") from None
        if any(len(c) != 64 for c in ids):
            raise ConfigError("a CHIP_ID is 64 bytes of hex", key="--snp-chip-id")
        chips = frozenset(ids)
    policy = SnpPolicy(
        min_tcb=dict(sorted(floors.items())),
        min_report_version=version,
        allow_migration_agent=bool(args.snp_allow_migration_agent),
        allow_smt=not args.snp_no_smt,
        require_single_socket=bool(args.snp_single_socket),
        vmpl=vmpl,
        allowed_chip_ids=chips,
        crl_missing=CrlMissing(args.snp_crl_missing or CrlMissing.REFUSE.value),
    )
    return policy, bool(args.snp_bind_host_data)
