"""A small synthetic OVMF image with what sev-snp-measure reads from an AmdSev build.

sev-snp-measure (``sevsnpmeasure.ovmf``) needs, at the end of the firmware volume, the OVMF
table (entries read backwards from a footer 32 bytes before the end, each ``data || u16 size ||
GUID`` in EFI byte order): the SEV-ES reset block (the AP reset EIP), the SEV metadata pointer
(an ``ASEV`` header listing SNP_SEC_MEM, SNP_SECRETS, CPUID and SNP_KERNEL_HASHES sections)
and the SEV hash table's GPA (where QEMU puts the kernel/initrd/cmdline hashes). A real
OvmfPkg/AmdSev/AmdSevX64.dsc build carries the same; this fixture is 64 KiB of deterministic
bytes around them (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm for the layout).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d"
SEV_HASH_TABLE_RV = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEV_ES_RESET_BLOCK = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_META_DATA = "dc886566-984a-4798-a75e-5585a7bf67cc"
SECTIONS = [  # (gpa, size, type): SNP_SEC_MEM, SNP_SECRETS, CPUID, SNP_KERNEL_HASHES
    (0x800000, 0x8000, 1),
    (0x808000, 0x1000, 2),
    (0x809000, 0x1000, 3),
    (0x80A000, 0x1000, 0x10),
]


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def make_ovmf(path: Path, *, size: int = 0x10000, kernel_hashes: bool = True) -> Path:
    body = bytearray()
    seed = b"attest-ovmf-fixture"
    while len(body) < size:  # deterministic filler standing in for the firmware volume
        seed = hashlib.sha256(seed).digest()
        body += seed
    image = bytearray(body[:size])
    sections = SECTIONS if kernel_hashes else SECTIONS[:3]
    meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    meta_at = 0x1000
    image[meta_at : meta_at + len(meta)] = meta
    table = _entry(SEV_ES_RESET_BLOCK, struct.pack("<I", 0x80B004))
    table += _entry(SEV_META_DATA, struct.pack("<I", size - meta_at))
    if kernel_hashes:
        table += _entry(SEV_HASH_TABLE_RV, struct.pack("<II", 0x80AC00, 0x400))
    footer = struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER).bytes_le
    end = size - 32
    image[end - len(footer) - len(table) : end] = table + footer
    image[end:] = bytes(32)
    path.write_bytes(bytes(image))
    return path
