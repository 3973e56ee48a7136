"""The SEV-SNP ATTESTATION_REPORT structure, versions 2, 3 and 5 (pure, bounded).

Layout: AMD SEV Secure Nested Paging Firmware ABI Specification (pub. 56860), §7.3
"Attestation", Table "ATTESTATION_REPORT Structure": 0x4A0 bytes, little-endian, the signature
at 0x2A0 over bytes 0x000-0x29F. Version 3 adds CPUID_FAM_ID/MOD_ID/STEP at 0x188-0x18A;
version 5 adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200). Every reserved range
must be zero, the POLICY's reserved bit 17 one; anything else raises ``SnpFormatError``.

A TCB_VERSION is kept raw (8 bytes) here: its layout depends on the product (Turin and later
put FMC first, see ``TcbVersion.decode``), which a version 2 report does not name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from attest.errors import SnpFormatError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000-0x29F
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
_RS_FIELD = 72  # R and S: little-endian, zero-padded to 72 bytes (ABI "ECDSA P-384 signature")
_P384_BYTES = 48


class Product(enum.StrEnum):
    """An SEV-SNP product line, named as AMD's KDS names it (and as its ARK's CN ends)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def fmc_in_tcb(self) -> bool:
        """Turin and later put an FMC SPL first in TCB_VERSION and in the VCEK."""
        return self is Product.TURIN


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product a version 3+ report's CPUID_FAM_ID / CPUID_MOD_ID name (combined extended
    family and model, CPUID Fn0000_0001_EAX), or None for a product attest does not know."""
    if family == 0x19:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:  # Genoa, Bergamo, Siena
            return Product.GENOA
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


class Signer(enum.IntEnum):
    """SIGNING_KEY (bits 4:2 at 0x48): which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION: security patch levels of the AMD-SP firmware and microcode."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin and later only

    @classmethod
    def decode(cls, raw: bytes, product: Product) -> TcbVersion:
        """Milan/Genoa: [BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE];
        Turin: [FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE]."""
        if len(raw) != 8:
            raise SnpFormatError(f"a TCB_VERSION is 8 bytes, got {len(raw)}")
        if product.fmc_in_tcb:
            return cls(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def encode(self, product: Product) -> bytes:
        if product.fmc_in_tcb:
            fmc = self.fmc or 0
            return bytes([fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def at_least(self, floor: TcbVersion) -> bool:
        """Every component at or above the floor's (a floor's fmc of None is not checked)."""
        pairs = [
            (self.bootloader, floor.bootloader),
            (self.tee, floor.tee),
            (self.snp, floor.snp),
            (self.microcode, floor.microcode),
        ]
        if floor.fmc is not None:
            pairs.append((self.fmc if self.fmc is not None else -1, floor.fmc))
        return all(got >= want for got, want in pairs)

    def as_dict(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp}
        out["microcode"] = self.microcode
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class GuestPolicy:
    """POLICY (0x08), ABI Table "Guest Policy Structure"."""

    raw: int

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    @property
    def smt(self) -> bool:
        """SMT is allowed."""
        return self._bit(16)

    @property
    def migrate_ma(self) -> bool:
        """A migration agent is allowed."""
        return self._bit(18)

    @property
    def debug(self) -> bool:
        """The host may debug (decrypt) the guest."""
        return self._bit(19)

    @property
    def single_socket(self) -> bool:
        """The guest may run on one socket only."""
        return self._bit(20)

    def as_dict(self) -> dict[str, object]:
        return {
            "raw": f"0x{self.raw:x}",
            "abi": f"{self.abi_major}.{self.abi_minor}",
            "smt": self.smt,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
        }


@dataclass(frozen=True)
class UnverifiedReport:
    """An ATTESTATION_REPORT that parsed; nothing in it is trusted until ``verify_report``."""

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signer: Signer
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None  # (family, model, stepping), version 3+
    chip_id: bytes
    committed_tcb: bytes
    current_version: tuple[int, int, int]  # (major, minor, build)
    committed_version: tuple[int, int, int]
    launch_tcb: bytes
    launch_mit_vector: int | None  # version 5+
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def cpuid_product(self) -> Product | None:
        return None if self.cpuid is None else product_from_cpuid(*self.cpuid[:2])


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "little")


def _u64(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 8], "little")


def _mbz(data: bytes, lo: int, hi: int) -> None:
    if any(data[lo:hi]):
        raise SnpFormatError(f"reserved bytes 0x{lo:03X}-0x{hi - 1:03X} are not zero")


def _check_reserved(data: bytes, version: int, algo: int, signer: Signer) -> None:
    _mbz(data, 0x04C, 0x050)
    _mbz(data, 0x188 if version < 3 else 0x18B, 0x1A0)
    _mbz(data, 0x1EB, 0x1EC)
    _mbz(data, 0x1EF, 0x1F0)
    _mbz(data, 0x1F8 if version < 5 else 0x208, SIGNED_SIZE)
    if signer is Signer.NONE:
        return
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SnpFormatError(f"unknown SIGNATURE_ALGO {algo} (1 = ECDSA P-384 with SHA-384)")
    sig = SIGNED_SIZE
    for start in (sig, sig + _RS_FIELD):  # R, S: 48 bytes of value, zero-padded to 72
        _mbz(data, start + _P384_BYTES, start + _RS_FIELD)
    _mbz(data, sig + 2 * _RS_FIELD, REPORT_SIZE)


def _parse_signer(info: int) -> tuple[bool, bool, Signer]:
    if info >> 5:
        raise SnpFormatError(f"reserved bits 31:5 of the signer info (0x048) are set: 0x{info:x}")
    try:
        signer = Signer((info >> 2) & 7)
    except ValueError:
        raise SnpFormatError(f"SIGNING_KEY {(info >> 2) & 7} is reserved") from None
    return bool(info & 1), bool(info & 2), signer


def _parse_policy(raw: int) -> GuestPolicy:
    if not raw >> 17 & 1:
        raise SnpFormatError(f"POLICY bit 17 is reserved and must be one: 0x{raw:x}")
    if raw >> 26:
        raise SnpFormatError(f"POLICY reserved bits 63:26 are set: 0x{raw:x}")
    return GuestPolicy(raw)


def parse_report(data: bytes) -> UnverifiedReport:
    """Parse an ATTESTATION_REPORT (exactly 0x4A0 bytes). Raises ``SnpFormatError``."""
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise SnpFormatError(f"an attestation report is {REPORT_SIZE} bytes, got {len(data)}")
    version = _u32(data, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise SnpFormatError(f"report version {version} is not one of {SUPPORTED_VERSIONS}")
    author_key_en, mask_chip_key, signer = _parse_signer(_u32(data, 0x048))
    algo = _u32(data, 0x034)
    _check_reserved(data, version, algo, signer)
    sig = data[SIGNED_SIZE:]
    return UnverifiedReport(
        raw=data,
        version=version,
        guest_svn=_u32(data, 0x004),
        policy=_parse_policy(_u64(data, 0x008)),
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=_u32(data, 0x030),
        signature_algo=algo,
        current_tcb=data[0x038:0x040],
        platform_info=_u64(data, 0x040),
        author_key_en=author_key_en,
        mask_chip_key=mask_chip_key,
        signer=signer,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=(data[0x188], data[0x189], data[0x18A]) if version >= 3 else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        launch_mit_vector=_u64(data, 0x1F8) if version >= 5 else None,
        current_mit_vector=_u64(data, 0x200) if version >= 5 else None,
        signature_r=int.from_bytes(sig[:_RS_FIELD], "little"),
        signature_s=int.from_bytes(sig[_RS_FIELD : 2 * _RS_FIELD], "little"),
    )
