"""The extended report / configfs-TSM certificate table: RFC 4122 GUIDs, bounded parsing."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.snp.fakes import fake

from attest.errors import SnpFormatError
from attest.snp.certtable import (
    ARK_GUID,
    ASK_GUID,
    ENTRY,
    VCEK_GUID,
    build_cert_table,
    parse_cert_table,
)
from attest.snp.report import Product


def _turin_table() -> tuple[bytes, dict[uuid.UUID, bytes]]:
    turin = fake(Product.TURIN)
    certs = {VCEK_GUID: turin.vcek.der, ASK_GUID: turin.ask.der, ARK_GUID: turin.ark.der}
    return build_cert_table(certs), certs


TABLE, CERTS = _turin_table()


def test_reads_the_certificates_back() -> None:
    table = parse_cert_table(TABLE)
    assert table.entries == CERTS
    assert TABLE[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")  # RFC 4122 order


def test_refuses_guids_in_efi_byte_order() -> None:
    efi = TABLE[:0] + VCEK_GUID.bytes_le + TABLE[16:]
    with pytest.raises(SnpFormatError, match="EFI byte order"):
        parse_cert_table(efi)


def _entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + offset.to_bytes(4, "little") + length.to_bytes(4, "little")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "terminating"),
        (_entry(VCEK_GUID, 24, 4) + b"abcd", "terminating"),
        (_entry(VCEK_GUID, 48, 100) + bytes(ENTRY), "outside"),
        (_entry(VCEK_GUID, 48, 0) + bytes(ENTRY), "outside"),
        (_entry(VCEK_GUID, 72, 1) + _entry(VCEK_GUID, 72, 1) + bytes(ENTRY) + b"x", "twice"),
        (_entry(VCEK_GUID, 0, 8) + bytes(ENTRY), "overlaps"),
        (b"".join(_entry(uuid.uuid4(), 0, 1) for _ in range(17)) + bytes(ENTRY), "more than"),
    ],
    ids=["empty", "no-terminator", "past-end", "empty-entry", "duplicate", "overlap", "too-many"],
)
def test_refuses_malformed_tables(data: bytes, message: str) -> None:
    with pytest.raises(SnpFormatError, match=message):
        parse_cert_table(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.integers(0, 200).map(lambda n: TABLE[:n]),
        st.tuples(st.integers(0, 4 * ENTRY - 1), st.integers(0, 255)).map(
            lambda t: TABLE[: t[0]] + bytes([t[1]]) + TABLE[t[0] + 1 :]
        ),
    )
)
def test_parser_raises_only_snp_format_error(data: bytes) -> None:
    with contextlib.suppress(SnpFormatError):
        parse_cert_table(data)
