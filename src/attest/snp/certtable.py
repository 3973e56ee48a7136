"""The certificate table of an extended report / configfs-TSM ``auxblob`` (pure, bounded).

GHCB specification (pub. 56421) §4.1.8.1, "SNP Extended Guest Request", and Linux
Documentation/ABI/testing/configfs-tsm (``auxblob``): a table of 24-byte entries
``{GUID[16], offset u32 LE, length u32 LE}`` ended by an all-zero entry, offsets counted from
the start of the table, followed by the certificates (DER). The GUIDs are in RFC 4122 byte
order (as printed, most significant byte first), not in the mixed-endian EFI order; a table
written in EFI order is refused with a message that says so.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

from attest.errors import SnpFormatError
from attest.snp.report import Signer

ENTRY = 24
MAX_ENTRIES = 16
MAX_TABLE = 256 * 1024

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # the ASVK too, under a VLEK
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
KNOWN = {VCEK_GUID: "VCEK", VLEK_GUID: "VLEK", ASK_GUID: "ASK", ARK_GUID: "ARK"}


@dataclass(frozen=True)
class CertTable:
    entries: dict[uuid.UUID, bytes]

    def get(self, guid: uuid.UUID) -> bytes | None:
        return self.entries.get(guid)


def parse_cert_table(data: bytes) -> CertTable:
    """Parse a certificate table. Raises ``SnpFormatError``."""
    data = bytes(data)
    if len(data) > MAX_TABLE:
        raise SnpFormatError(f"a certificate table of {len(data)} bytes is too large")
    spans: dict[uuid.UUID, tuple[int, int]] = {}
    for i in range(MAX_ENTRIES + 1):
        pos = i * ENTRY
        if pos + ENTRY > len(data):
            raise SnpFormatError("the certificate table has no terminating all-zero entry")
        raw = data[pos : pos + ENTRY]
        if not any(raw):
            break
        if i == MAX_ENTRIES:
            raise SnpFormatError(f"more than {MAX_ENTRIES} certificate table entries")
        guid = uuid.UUID(bytes=raw[:16])
        efi = uuid.UUID(bytes_le=raw[:16])
        if guid not in KNOWN and efi in KNOWN:
            raise SnpFormatError(f"GUID {efi} ({KNOWN[efi]}) is in EFI byte order, not RFC 4122")
        offset = int.from_bytes(raw[16:20], "little")
        length = int.from_bytes(raw[20:24], "little")
        if length == 0 or offset + length > len(data):
            raise SnpFormatError(f"entry {guid}: bytes {offset}+{length} outside the table")
        if guid in spans:
            raise SnpFormatError(f"entry {guid} appears twice")
        spans[guid] = (offset, length)
    header = (len(spans) + 1) * ENTRY
    for guid, (offset, _) in spans.items():
        if offset < header:
            raise SnpFormatError(f"entry {guid} overlaps the table itself")
    return CertTable({guid: data[o : o + n] for guid, (o, n) in spans.items()})


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def chain_of(table: CertTable, signer: Signer) -> tuple[bytes, bytes]:
    """(leaf DER, intermediates as a PEM bundle) of a table, for ``SnpVerifier``: the VCEK or
    VLEK the report's SIGNING_KEY names, then the ASK / ASVK and the ARK when present.
    ``SnpFormatError`` when the table has no such leaf."""
    leaf = table.get(VLEK_GUID if signer is Signer.VLEK else VCEK_GUID)
    if leaf is None:
        raise SnpFormatError(f"the certificate table has no {signer.name}")
    pems = [_pem(c) for g in (ASK_GUID, ARK_GUID) if (c := table.get(g)) is not None]
    return leaf, b"".join(pems)


def build_cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    """The table for ``certs`` (used by tests and tools; attest itself only reads tables)."""
    header = (len(certs) + 1) * ENTRY
    table, blobs, offset = b"", b"", header
    for guid, cert in certs.items():
        table += guid.bytes + offset.to_bytes(4, "little") + len(cert).to_bytes(4, "little")
        blobs += cert
        offset += len(cert)
    return table + bytes(ENTRY) + blobs
