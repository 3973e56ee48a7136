"""``attest snp verify`` and ``attest snp measure``: AMD SEV-SNP reports and launch digests.

``verify`` checks a report against its VCEK/VLEK and a chain to an AMD root, at ``--now``; given
a registry (``--trust-dir`` or ``--root``/``--snapshot``) it also appraises the guest against a
blessed release: its launch MEASUREMENT, the release's SNP policy, HOST_DATA. attest
pins each product's ARK by its key's SHA-256 and ships no certificate: the ARK comes with the
chain (AMD's KDS cert_chain is ASK + ARK), the certificate table, or ``--ark-dir``.
``measure`` predicts the launch digest of an SNP guest with the ``sev-snp-measure`` library
(the optional ``snp`` extra: ``pip install 'attest[snp]'``). See docs/snp.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import importlib
import os
import stat
from pathlib import Path
from typing import Any

from attest.cli._common import EXIT_OK, print_json
from attest.cli._registry import add_registry_arguments, load_registry
from attest.errors import ConfigError, SnpCheckError, SnpFormatError
from attest.manifest.parse import MAX_SNP_VCPUS
from attest.manifest.snp import SnpReleaseAppraisal, appraise_snp_release
from attest.snp.certs import AmdCertificate, load_certificates, load_crl
from attest.snp.certtable import chain_of, parse_cert_table
from attest.snp.findings import Finding
from attest.snp.policy import verify_crl
from attest.snp.report import Signer, TcbVersion, parse_report
from attest.snp.roots import AMD_ARK_PINS
from attest.snp.verify import SnpVerifier, VerifiedReport
from attest.storage.files import read_bytes

MAX_INPUT = 1024 * 1024
MAX_HASHED_FILE = 2 << 30  # a kernel or initrd (sev-snp-measure reads it into memory)
MAX_ARK_FILES = 32
CERT_SUFFIXES = (".pem", ".der", ".crt", ".cer")
GUEST_FEATURES = 0x1  # sev-snp-measure's default for SNP: SNPActive


def register(sub: Any) -> None:
    p = sub.add_parser("snp", help="verify AMD SEV-SNP reports, predict launch measurements")
    ssub = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND")
    ssub.required = True

    v = ssub.add_parser("verify", help="verify a report: signature, chain to a pinned AMD root")
    v.add_argument("--report", required=True, type=Path, help="ATTESTATION_REPORT (1184 bytes)")
    v.add_argument("--vcek", type=Path, help="the VCEK or VLEK, DER or PEM")
    v.add_argument(
        "--chain",
        type=Path,
        help="PEM: the ASK or ASVK and the ARK (AMD's KDS cert_chain); the ARK may come from "
        "--ark-dir instead",
    )
    v.add_argument(
        "--certs-table",
        type=Path,
        help="an extended report's / configfs-TSM auxblob certificate table",
    )
    v.add_argument(
        "--ark-dir",
        type=Path,
        help="a directory of AMD certificates (*.pem, *.der, *.crt, *.cer): each product's ARK, "
        "optionally its ASK/ASVK; an ARK counts only when its key is the pinned one",
    )
    v.add_argument("--now", type=_when, help="check validity (and freshness) at this time")
    v.add_argument("--report-data", type=_report_data, help="expected REPORT_DATA, 64 bytes hex")
    v.add_argument("--json", action="store_true", help="print the verified fields as JSON")
    add_registry_arguments(
        v, trust_dir_help="appraise against the blessed releases of this trusted manifest state"
    )
    v.add_argument(
        "--release",
        help="the release the guest should run (default: the release whose blessed launch has "
        "the report's MEASUREMENT)",
    )
    v.add_argument(
        "--platform",
        help="the guest's platform id in the registry: its reference's SNP policy, if any, "
        "applies too (the stricter of the two)",
    )
    v.add_argument("--crl", type=Path, help="AMD's CRL for the product (KDS /vcek/v1/PRODUCT/crl)")
    v.set_defaults(func=cmd_verify)

    m = ssub.add_parser("measure", help="the expected launch digest of an SNP guest")
    m.add_argument("--ovmf", required=True, type=Path, help="OVMF with SEV metadata (AmdSev)")
    m.add_argument("--vcpus", required=True, type=int, help="number of vCPUs")
    m.add_argument("--vcpu-type", required=True, help="e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa")
    m.add_argument("--kernel", type=Path, help="kernel (measured by hash: SNP_KERNEL_HASHES)")
    m.add_argument("--initrd", type=Path, help="initrd (with --kernel)")
    m.add_argument("--append", help="kernel command line (with --kernel)")
    m.add_argument("--json", action="store_true", help='print {"measurement": ...}')
    m.set_defaults(func=cmd_measure)


def _when(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _report_data(text: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("REPORT_DATA must be hex") from None
    if len(data) != 64:
        raise argparse.ArgumentTypeError(f"REPORT_DATA is 64 bytes, got {len(data)}")
    return data


def _certificates(args: argparse.Namespace, signer: Signer) -> tuple[bytes, bytes]:
    """(leaf, intermediates) from --vcek/--chain or from --certs-table."""
    if args.certs_table is not None:
        if args.vcek is not None or args.chain is not None:
            raise ConfigError("use --certs-table or --vcek/--chain, not both", key="--certs-table")
        return chain_of(parse_cert_table(read_bytes(args.certs_table, max_size=MAX_INPUT)), signer)
    if args.vcek is None:
        raise ConfigError("give the report's VCEK/VLEK or a certificate table", key="--vcek")
    chain = read_bytes(args.chain, max_size=MAX_INPUT) if args.chain is not None else b""
    return read_bytes(args.vcek, max_size=MAX_INPUT), chain


def _amd_certs(directory: Path | None) -> list[AmdCertificate]:
    """The certificates of the operator's AMD directory (--ark-dir), sorted by file name."""
    if directory is None:
        return []
    files = sorted(
        f for f in directory.iterdir() if f.suffix.lower() in CERT_SUFFIXES and f.is_file()
    )
    if not files or len(files) > MAX_ARK_FILES:
        raise ConfigError(
            f"{directory}: expected 1-{MAX_ARK_FILES} certificate files "
            f"({', '.join(CERT_SUFFIXES)}), found {len(files)}",
            key="--ark-dir",
        )
    certs: list[AmdCertificate] = []
    for f in files:
        try:
            certs += load_certificates(read_bytes(f, max_size=MAX_INPUT))
        except SnpFormatError as exc:
            raise SnpFormatError(f"{f}: {exc}") from None
    return certs


def _tcb(raw: bytes, vr: VerifiedReport) -> dict[str, int]:
    return TcbVersion.decode(raw, vr.product).as_dict()


def report_json(vr: VerifiedReport) -> dict[str, object]:
    r = vr.report
    return {
        "version": r.version,
        "product": vr.product.value,
        "signer": vr.signer.name.lower(),
        "measurement": r.measurement.hex(),
        "report_data": r.report_data.hex(),
        "host_data": r.host_data.hex(),
        "chip_id": r.chip_id.hex(),
        "vmpl": r.vmpl,
        "policy": r.policy.as_dict(),
        "guest_svn": r.guest_svn,
        "family_id": r.family_id.hex(),
        "image_id": r.image_id.hex(),
        "id_key_digest": r.id_key_digest.hex(),
        "author_key_digest": r.author_key_digest.hex(),
        "report_id": r.report_id.hex(),
        "platform_info": f"0x{r.platform_info:x}",
        "reported_tcb": vr.reported_tcb.as_dict(),
        "current_tcb": _tcb(r.current_tcb, vr),
        "committed_tcb": _tcb(r.committed_tcb, vr),
        "launch_tcb": _tcb(r.launch_tcb, vr),
        "cpuid": None if r.cpuid is None else {"family": r.cpuid[0], "model": r.cpuid[1]},
        "leaf_not_after": vr.chain.leaf.x509.not_valid_after_utc.isoformat(),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    raw = read_bytes(args.report, max_size=MAX_INPUT)
    report = parse_report(raw)
    leaf, intermediates = _certificates(args, report.signer)
    now = args.now or dt.datetime.now(dt.UTC)  # the shell takes the clock, once
    verifier = SnpVerifier(pins=AMD_ARK_PINS, amd_certs=_amd_certs(args.ark_dir))
    vr = verifier.verify(
        raw, leaf=leaf, intermediates=intermediates, now=now, expected_report_data=args.report_data
    )
    registry = load_registry(args, now)
    if registry is None and (
        args.release is not None or args.crl is not None or args.platform is not None
    ):
        raise ConfigError(
            "--release, --platform and --crl need a registry (--trust-dir or --root/--snapshot)",
            key="--release",
        )
    appraisal = None
    if registry is not None:
        crl = None
        if args.crl is not None:
            crl = verify_crl(load_crl(read_bytes(args.crl, max_size=MAX_INPUT)), vr.chain)
        appraisal = appraise_snp_release(
            vr, registry, version=args.release, crl=crl, now=now, platform=args.platform
        )
    if args.json:
        doc = report_json(vr)
        if appraisal is not None:
            doc["appraisal"] = appraisal_json(appraisal)
        print_json(doc)
    else:
        print(
            f"verified: {vr.product.value} {vr.signer.name} report v{report.version}, "
            f"measurement {report.measurement.hex()}"
        )
        if appraisal is not None:
            _print_appraisal(appraisal)
    if appraisal is not None and not appraisal.affirmed:
        first = appraisal.decision.refusals[0]
        more = len(appraisal.decision.refusals) - 1
        tail = f" (and {more} more refusal(s))" if more else ""
        raise SnpCheckError(first.check, first.message + tail)
    return EXIT_OK


def appraisal_json(a: SnpReleaseAppraisal) -> dict[str, object]:
    def findings(fs: tuple[Finding, ...]) -> list[dict[str, str]]:
        return [{"check": f.check.value, "message": f.message} for f in fs]

    return {
        "affirmed": a.affirmed,
        "release": None if a.release is None else a.release.version,
        "slot": None if a.launch is None else a.launch.slot,
        "refusals": findings(a.decision.refusals),
        "warnings": findings(a.decision.warnings),
    }


def _print_appraisal(a: SnpReleaseAppraisal) -> None:
    if a.affirmed and a.release is not None and a.launch is not None:
        print(
            f"blessed: release {a.release.version}, slot {a.launch.slot} "
            f"({a.launch.vcpus} x {a.launch.vcpu_type})"
        )
    for f in a.decision.warnings:
        print(f"warning: {f.check}: {f.message}")
    for f in a.decision.refusals:
        print(f"refused: {f.check}: {f.message}")


def launch_measurement(
    *,
    ovmf: Path,
    vcpus: int,
    vcpu_type: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    flags: str = "--",
) -> bytes:
    """The SNP launch digest ``sev-snp-measure`` computes (the adapter for the optional library:
    ``attest snp measure`` and ``attest manifest bless --snp-*`` both measure through here).
    ``flags`` prefixes the option names that errors cite."""
    if kernel is None and (initrd is not None or append is not None):
        raise ConfigError("--initrd and --append need --kernel", key=f"{flags}kernel")
    if append is not None:
        try:  # bytes that are not UTF-8 (held as surrogates): the library's error named the OVMF
            append.encode()
        except UnicodeEncodeError:
            raise ConfigError("the command line is not UTF-8", key=f"{flags}append") from None
    try:  # the optional 'snp' extra, loaded only when a launch is measured
        guest = importlib.import_module("sevsnpmeasure.guest")
        ovmf_mod = importlib.import_module("sevsnpmeasure.ovmf")
        sev_mode = importlib.import_module("sevsnpmeasure.sev_mode")
        vcpu_types = importlib.import_module("sevsnpmeasure.vcpu_types")
    except ImportError:
        raise ConfigError("needs sev-snp-measure: pip install 'attest[snp]'", key="snp") from None
    sigs: dict[str, int] = vcpu_types.CPU_SIGS
    if vcpu_type not in sigs:
        raise ConfigError(f"unknown vCPU type; one of {', '.join(sigs)}", key=f"{flags}vcpu-type")
    # The digest takes one VMSA page per vCPU: --vcpus 10**20 would never end. The registry's
    # bound: a launch of more vCPUs could not be blessed.
    if not 1 <= vcpus <= MAX_SNP_VCPUS:
        raise ConfigError(f"at least one vCPU, at most {MAX_SNP_VCPUS}", key=f"{flags}vcpus")
    read_bytes(ovmf)  # a missing or oversized file is an I/O error, before the library
    for path in (kernel, initrd):
        if path is not None:
            _check_hashed_file(path)
    try:
        if not ovmf_mod.OVMF(str(ovmf)).metadata_items():
            raise SnpFormatError(f"{ovmf}: no SEV metadata (not an AmdSev/SNP OVMF build)")
        digest: bytes = guest.calc_launch_digest(
            sev_mode.SevMode.SEV_SNP,
            vcpus,
            sigs[vcpu_type],
            str(ovmf),
            str(kernel) if kernel else None,
            str(initrd) if initrd else None,
            append,
            GUEST_FEATURES,
        )
    except (RuntimeError, ValueError) as exc:  # what sev-snp-measure raises on a bad OVMF
        raise SnpFormatError(f"{ovmf}: {exc}") from None
    return digest


def _check_hashed_file(path: Path) -> None:
    """A kernel or initrd that sev-snp-measure reads whole to hash: a regular file of at most
    ``MAX_HASHED_FILE`` bytes, or /dev/null for none (``OSError``, exit 6), so that /dev/zero
    or a FIFO is refused rather than read without end."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode) and not path.samefile(os.devnull):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if st.st_size > MAX_HASHED_FILE:
        raise OSError(errno.EFBIG, f"file larger than {MAX_HASHED_FILE} bytes", str(path))


def cmd_measure(args: argparse.Namespace) -> int:
    digest = launch_measurement(
        ovmf=args.ovmf,
        vcpus=args.vcpus,
        vcpu_type=args.vcpu_type,
        kernel=args.kernel,
        initrd=args.initrd,
        append=args.append,
    )
    if args.json:
        print_json({"measurement": digest.hex()})
    else:
        print(digest.hex())
    return EXIT_OK
