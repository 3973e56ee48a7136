"""Unified kernel images (UKI): PE parsing, Authenticode hashing, and the PCRs 4, 9, 11 and 12
that booting a UKI through systemd-stub (252) under UEFI firmware produces -- computed from the
image's bytes alone (pure: bytes in, digests out; no files, no clock).

What is measured, and where (checked against booted VMs by ``tests/vm``):

- **PCR 4** (firmware, TCG PC Client PFP 1.05 §10.4.4 / §3.3.4.5): ``EV_EFI_ACTION "Calling EFI
  Application from Boot Option"``, the ``EV_SEPARATOR`` of PCRs 0-7, then one
  ``EV_EFI_BOOT_SERVICES_APPLICATION`` per image the firmware loads: the Authenticode digest of
  the UKI, and -- systemd-stub 252 starts the kernel with ``LoadImage`` -- the Authenticode
  digest of the ``.linux`` section's bytes (``VirtualSize`` long).
- **PCR 11** (systemd-stub, ``EV_IPL``): for each of ``.linux .osrel .cmdline .initrd .splash
  .dtb .pcrpkey`` present, in that order: the digest of the section name with its NUL, then of
  the section's bytes (``VirtualSize`` long).
- **PCR 9** (the Linux EFI stub, ``EV_EVENT_TAG``): its ``LoadOptions`` -- the command line in
  UTF-16LE with a terminating NUL -- then the initrd bytes.
- **PCR 12** (systemd-stub): only credentials, system extensions and a command line that
  *replaces* the embedded one are measured; a normal boot leaves it at zero. A command line
  typed at the firmware shell therefore changes PCRs 9 and 12 but not 11.

The Authenticode digest follows "Windows Authenticode Portable Executable Signature Format"
(1.0, §"Calculating the PE Image Hash") as EDK2's ``DxeTpm2MeasureBootLib`` implements it:
the headers without ``CheckSum`` and the certificate-table directory entry, the sections in the
order of ``PointerToRawData`` (``SizeOfRawData`` each), then the trailing bytes minus the
certificate table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from attest.errors import UkiFormatError
from attest.model import HashAlg, extend

MAX_IMAGE = 1 << 30  # bounded input: no UKI is a GiB
MAX_SECTIONS = 96  # PE/COFF allows 96

CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
SEPARATOR = b"\x00\x00\x00\x00"
# systemd 252 src/fundamental/tpm-pcr.h: unified_sections[], the order stub measures them in.
MEASURED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
PCR_BOOT_APPS = 4
PCR_LINUX_STUB = 9
PCR_KERNEL_BOOT = 11
PCR_KERNEL_CONFIG = 12

_IMAGE_DIRECTORY_ENTRY_SECURITY = 4
_PE32 = 0x10B
_PE32_PLUS = 0x20B


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int

    def data(self, image: bytes) -> bytes:
        """The section's bytes as loaded: ``VirtualSize`` long (zero-filled past the raw data)."""
        raw = image[
            self.pointer_to_raw_data : self.pointer_to_raw_data
            + min(self.size_of_raw_data, self.virtual_size)
        ]
        return raw + bytes(self.virtual_size - len(raw))


@dataclass(frozen=True, slots=True)
class PeImage:
    """The parts of a PE/COFF image that hashing and UKI assembly need."""

    pe_offset: int
    timestamp_offset: int
    checksum_offset: int
    security_dir_offset: int | None  # the certificate-table data-directory entry, if present
    size_of_headers: int
    image_base: int
    section_alignment: int
    file_alignment: int
    cert_table: tuple[int, int]  # (file offset, size); (0, 0) when unsigned
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    @property
    def end_of_image(self) -> int:
        """The first relative virtual address past every section."""
        return max(
            (s.virtual_address + max(s.virtual_size, s.size_of_raw_data) for s in self.sections),
            default=0,
        )


def _u16(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", b, off)[0])


def _u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def parse_pe(image: bytes) -> PeImage:
    """Parse the DOS, COFF and optional headers and the section table (bounded)."""
    if len(image) > MAX_IMAGE:
        raise UkiFormatError(f"image of {len(image)} bytes is over {MAX_IMAGE}")
    try:
        return _parse_pe(image)
    except struct.error:
        raise UkiFormatError("truncated PE headers") from None


def _parse_pe(b: bytes) -> PeImage:
    if b[:2] != b"MZ":
        raise UkiFormatError("no MZ signature")
    pe = _u32(b, 0x3C)
    if b[pe : pe + 4] != b"PE\0\0":
        raise UkiFormatError(f"no PE signature at {pe:#x}")
    coff = pe + 4
    nsections = _u16(b, coff + 2)
    opt_size = _u16(b, coff + 16)
    if nsections > MAX_SECTIONS:
        raise UkiFormatError(f"{nsections} sections (at most {MAX_SECTIONS})")
    opt = coff + 20
    magic = _u16(b, opt)
    if magic == _PE32_PLUS:
        image_base = int(struct.unpack_from("<Q", b, opt + 24)[0])
        n_rva_off, dirs = opt + 108, opt + 112
    elif magic == _PE32:
        image_base = _u32(b, opt + 28)
        n_rva_off, dirs = opt + 92, opt + 96
    else:
        raise UkiFormatError(f"unknown optional-header magic {magic:#x}")
    if n_rva_off + 4 > opt + opt_size:
        raise UkiFormatError("optional header too short")
    section_alignment = _u32(b, opt + 32)
    file_alignment = _u32(b, opt + 36)
    size_of_headers = _u32(b, opt + 60)
    n_rva = _u32(b, n_rva_off)
    security = None
    cert_table = (0, 0)
    if n_rva > _IMAGE_DIRECTORY_ENTRY_SECURITY:
        security = dirs + 8 * _IMAGE_DIRECTORY_ENTRY_SECURITY
        if security + 8 > opt + opt_size:
            raise UkiFormatError("data directories run past the optional header")
        cert_table = (_u32(b, security), _u32(b, security + 4))
    table = opt + opt_size
    sections = []
    for i in range(nsections):
        h = table + 40 * i
        raw_name = b[h : h + 8]
        if len(raw_name) < 8:
            raise UkiFormatError("truncated section table")
        name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
        vsize, vaddr, rsize, rptr = struct.unpack_from("<IIII", b, h + 8)
        if rsize and rptr + rsize > len(b):
            raise UkiFormatError(f"section {name} runs past the end of the file")
        sections.append(Section(name, vsize, vaddr, rsize, rptr))
    if size_of_headers > len(b) or size_of_headers < table + 40 * nsections:
        raise UkiFormatError("SizeOfHeaders does not cover the section table")
    return PeImage(
        pe_offset=pe,
        timestamp_offset=coff + 4,
        checksum_offset=opt + 64,
        security_dir_offset=security,
        size_of_headers=size_of_headers,
        image_base=image_base,
        section_alignment=section_alignment,
        file_alignment=file_alignment,
        cert_table=cert_table,
        sections=tuple(sections),
    )


def authenticode_digest(image: bytes, alg: HashAlg = HashAlg.SHA256) -> bytes:
    """The Authenticode (PE image) digest, as UEFI firmware measures a loaded image."""
    pe = parse_pe(image)
    h = alg.new()
    # 1. headers up to CheckSum; skip it; up to the certificate-table entry; skip it; the rest
    #    of the headers.
    h.update(image[: pe.checksum_offset])
    if pe.security_dir_offset is None:
        h.update(image[pe.checksum_offset + 4 : pe.size_of_headers])
    else:
        h.update(image[pe.checksum_offset + 4 : pe.security_dir_offset])
        h.update(image[pe.security_dir_offset + 8 : pe.size_of_headers])
    hashed = pe.size_of_headers
    # 2. sections in the order of PointerToRawData.
    for s in sorted(pe.sections, key=lambda s: s.pointer_to_raw_data):
        if s.size_of_raw_data == 0:
            continue
        h.update(image[s.pointer_to_raw_data : s.pointer_to_raw_data + s.size_of_raw_data])
        hashed += s.size_of_raw_data
    # 3. trailing data, less the certificate table.
    if len(image) > hashed:
        extra = len(image) - hashed - pe.cert_table[1]
        if extra < 0:
            raise UkiFormatError("the certificate table is larger than the trailing data")
        h.update(image[hashed : hashed + extra])
    return h.digest()


def utf16_load_options(cmdline: str) -> bytes:
    """``LOADED_IMAGE::LoadOptions`` as systemd-stub hands the embedded command line to the
    kernel: UTF-16LE with a terminating NUL."""
    return (cmdline + "\0").encode("utf-16-le")


@dataclass(frozen=True, slots=True)
class UkiParts:
    """The measured sections of a UKI (bytes ``VirtualSize`` long)."""

    sections: Mapping[str, bytes]

    @property
    def cmdline(self) -> str:
        return self.sections.get(".cmdline", b"").decode("utf-8", errors="replace")

    @property
    def initrd(self) -> bytes | None:
        return self.sections.get(".initrd")

    @property
    def linux(self) -> bytes:
        return self.sections[".linux"]


def parse_uki(image: bytes) -> UkiParts:
    pe = parse_pe(image)
    out = {}
    for name in MEASURED_SECTIONS:
        s = pe.section(name)
        if s is not None:
            # Assembled sections carry all their bytes in the file; a section that claims
            # more in memory than on disk is refused rather than zero-filled (bounded work).
            if s.virtual_size > s.size_of_raw_data:
                raise UkiFormatError(
                    f"section {name}: VirtualSize {s.virtual_size} is over "
                    f"SizeOfRawData {s.size_of_raw_data}"
                )
            out[name] = s.data(image)
    if ".linux" not in out:
        raise UkiFormatError("no .linux section: not a unified kernel image")
    return UkiParts(out)


def _chain(alg: HashAlg, digests: Iterable[bytes]) -> bytes:
    value = bytes(alg.digest_size)
    for d in digests:
        value = extend(alg, value, d)
    return value


def pcr4_events(image: bytes, alg: HashAlg = HashAlg.SHA256) -> list[bytes]:
    parts = parse_uki(image)
    return [
        alg.digest(CALLING_EFI_APPLICATION),
        alg.digest(SEPARATOR),
        authenticode_digest(image, alg),
        authenticode_digest(parts.linux, alg),
    ]


def pcr11_events(image: bytes, alg: HashAlg = HashAlg.SHA256) -> list[bytes]:
    parts = parse_uki(image)
    out = []
    for name in MEASURED_SECTIONS:
        if name in parts.sections:
            out.append(alg.digest(name.encode() + b"\0"))
            out.append(alg.digest(parts.sections[name]))
    return out


def pcr9_events(
    image: bytes, alg: HashAlg = HashAlg.SHA256, *, cmdline: str | None = None
) -> list[bytes]:
    """``cmdline`` overrides the embedded command line (what a firmware-shell boot does)."""
    parts = parse_uki(image)
    text = parts.cmdline if cmdline is None else cmdline
    out = [alg.digest(utf16_load_options(text))]
    if parts.initrd is not None:
        out.append(alg.digest(parts.initrd))
    return out


def predict_pcrs(
    image: bytes, algs: Iterable[HashAlg] = (HashAlg.SHA256,)
) -> dict[HashAlg, dict[int, bytes]]:
    """The values of PCRs 4, 9, 11 and 12 after a normal boot of ``image``, per bank."""
    out: dict[HashAlg, dict[int, bytes]] = {}
    for alg in algs:
        out[alg] = {
            PCR_BOOT_APPS: _chain(alg, pcr4_events(image, alg)),
            PCR_LINUX_STUB: _chain(alg, pcr9_events(image, alg)),
            PCR_KERNEL_BOOT: _chain(alg, pcr11_events(image, alg)),
            PCR_KERNEL_CONFIG: bytes(alg.digest_size),
        }
    return out


def predict_json(image: bytes, algs: Iterable[HashAlg] = (HashAlg.SHA256,)) -> dict[str, Any]:
    """``{"sha256": {"4": hex, ...}}`` -- the labelled-JSON shape the CLI reads."""
    return {
        alg.bank_name: {str(i): v.hex() for i, v in pcrs.items()}
        for alg, pcrs in predict_pcrs(image, algs).items()
    }


# --- assembly helpers (pure): reproducible bytes ---------------------------------------------


def with_timestamp(image: bytes, timestamp: int = 0) -> bytes:
    """The same PE with ``TimeDateStamp`` set and ``CheckSum`` zeroed. objcopy stamps the
    current time and computes a checksum over it; UEFI ignores the checksum and Authenticode
    excludes it, so zero is the reproducible choice."""
    pe = parse_pe(image)
    b = bytearray(image)
    struct.pack_into("<I", b, pe.timestamp_offset, timestamp)
    struct.pack_into("<I", b, pe.checksum_offset, 0)
    return bytes(b)
