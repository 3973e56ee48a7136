"""attest.uki: Authenticode hashing and the PCR 4/9/11/12 prediction of a unified kernel image.

The equality of the prediction with what a booted VM quotes is proven in tests/vm; here the
hashing rules are pinned on synthetic PE images built by the test itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import uki
from attest.errors import UkiFormatError
from attest.model import HashAlg, extend

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def make_pe(
    sections: list[tuple[str, bytes]],
    *,
    trailing: bytes = b"",
    cert: bytes = b"",
    timestamp: int = 0,
    checksum: int = 0,
    vsizes: dict[str, int] | None = None,
) -> bytes:
    """A minimal PE32+ image: DOS stub, COFF header, optional header with 16 data
    directories, a section table, raw data aligned to 512, then trailing bytes and a
    certificate table (pointed to by the security directory)."""
    falign, salign = 0x200, 0x1000
    pe_off = 0x80
    opt_size = 112 + 16 * 8
    table = pe_off + 4 + 20 + opt_size
    headers = -(-(table + 40 * len(sections)) // falign) * falign
    raw, ptr, va = b"", headers, salign
    rows = []
    for name, data in sections:
        size = -(-len(data) // falign) * falign
        vs = (vsizes or {}).get(name, len(data))
        rows.append(struct.pack("<8sIIII12xI", name.encode(), vs, va, size, ptr, 0x40000040))
        raw += data + bytes(size - len(data))
        ptr += size
        va += -(-max(vs, size) // salign) * salign
    body = raw + trailing
    cert_off = headers + len(body) if cert else 0
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", pe_off)
    dos += bytes(pe_off - len(dos))
    coff = b"PE\0\0" + struct.pack(
        "<HHIIIHH", 0x8664, len(sections), timestamp, 0, 0, opt_size, 0x22
    )
    opt = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B,
        0,
        0,
        len(raw),
        0,
        0,
        0x1000,
        0x1000,
        0,
        salign,
        falign,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        va,
        headers,
        checksum,
        10,
        0,
        0,
        0,
        0,
        0,
        0,
        16,
    )
    dirs = bytearray(16 * 8)
    struct.pack_into("<II", dirs, 8 * 4, cert_off, len(cert))
    hdr = dos + coff + opt + bytes(dirs) + b"".join(rows)
    return hdr + bytes(headers - len(hdr)) + body + cert


def manual_authenticode(pe: bytes, *, cert_len: int) -> bytes:
    """The spec's steps written out longhand for the fixed layout of make_pe."""
    p = uki.parse_pe(pe)
    h = hashlib.sha256()
    h.update(pe[: p.checksum_offset])
    assert p.security_dir_offset is not None
    h.update(pe[p.checksum_offset + 4 : p.security_dir_offset])
    h.update(pe[p.security_dir_offset + 8 : p.size_of_headers])
    h.update(pe[p.size_of_headers : len(pe) - cert_len])
    return h.digest()


SECTIONS = [(".text", b"\x90" * 1000), (".data", b"data" * 300)]


def test_authenticode_matches_the_spec_steps() -> None:
    pe = make_pe(SECTIONS, trailing=b"tail" * 10)
    assert uki.authenticode_digest(pe) == manual_authenticode(pe, cert_len=0)


def test_authenticode_ignores_checksum_and_certificate_table() -> None:
    plain = make_pe(SECTIONS)
    signed = make_pe(SECTIONS, cert=b"\x30\x82" + bytes(62), checksum=0xDEADBEEF)
    assert uki.parse_pe(signed).cert_table[1] == 64
    assert uki.authenticode_digest(plain) == uki.authenticode_digest(signed)


def test_authenticode_covers_timestamp_sections_and_trailing_data() -> None:
    base = uki.authenticode_digest(make_pe(SECTIONS))
    assert uki.authenticode_digest(make_pe(SECTIONS, timestamp=1)) != base
    assert uki.authenticode_digest(make_pe([(".text", b"\x91" * 1000), SECTIONS[1]])) != base
    assert uki.authenticode_digest(make_pe(SECTIONS, trailing=b"x")) != base


def test_with_timestamp_makes_images_identical() -> None:
    a = make_pe(SECTIONS, timestamp=1700000000, checksum=0x1234)
    b = make_pe(SECTIONS, timestamp=1800000000, checksum=0x5678)
    assert a != b
    assert uki.with_timestamp(a) == uki.with_timestamp(b) == make_pe(SECTIONS)


def fake_uki(cmdline: str = "console=ttyS0 roothash=ab", initrd: bytes = b"INITRD") -> bytes:
    linux = make_pe([(".text", b"kernel" * 100)])
    return make_pe(
        [
            (".text", b"stub" * 100),
            (".osrel", b"ID=test\n"),
            (".cmdline", cmdline.encode()),
            (".linux", linux),
            (".initrd", initrd),
        ]
    )


def chain(digests: list[bytes]) -> bytes:
    v = bytes(32)
    for d in digests:
        v = extend(HashAlg.SHA256, v, d)
    return v


def test_pcr11_measures_name_then_bytes_in_stub_order() -> None:
    image = fake_uki()
    parts = uki.parse_uki(image)
    expected = []
    for name in (".linux", ".osrel", ".cmdline", ".initrd"):
        expected += [
            hashlib.sha256(name.encode() + b"\0").digest(),
            hashlib.sha256(parts.sections[name]).digest(),
        ]
    assert uki.predict_pcrs(image)[HashAlg.SHA256][11] == chain(expected)


def test_pcr9_is_utf16_load_options_then_initrd() -> None:
    image = fake_uki(cmdline="quiet roothash=00")
    expected = chain(
        [
            hashlib.sha256("quiet roothash=00\0".encode("utf-16-le")).digest(),
            hashlib.sha256(b"INITRD").digest(),
        ]
    )
    assert uki.predict_pcrs(image)[HashAlg.SHA256][9] == expected


def test_pcr4_is_action_separator_uki_then_kernel() -> None:
    image = fake_uki()
    linux = uki.parse_uki(image).linux
    expected = chain(
        [
            hashlib.sha256(uki.CALLING_EFI_APPLICATION).digest(),
            hashlib.sha256(bytes(4)).digest(),
            uki.authenticode_digest(image),
            uki.authenticode_digest(linux),
        ]
    )
    assert uki.predict_pcrs(image)[HashAlg.SHA256][4] == expected


def test_shell_command_line_changes_pcr9_not_pcr11() -> None:
    image = fake_uki()
    typed = uki.pcr9_events(image, cmdline="console=ttyS0 init=/bin/sh")
    assert typed != uki.pcr9_events(image)
    assert uki.predict_pcrs(image)[HashAlg.SHA256][12] == bytes(32)


def test_section_data_is_virtual_size_long() -> None:
    image = make_pe(
        [(".text", b"a" * 10), (".linux", make_pe([(".text", b"k")])), (".cmdline", b"abc")],
        vsizes={".cmdline": 2},
    )
    assert uki.parse_uki(image).sections[".cmdline"] == b"ab"


def test_rejects_image_without_linux_section() -> None:
    with pytest.raises(UkiFormatError, match="not a unified kernel image"):
        uki.parse_uki(make_pe(SECTIONS))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(0, 600), st.binary(min_size=1, max_size=8))
def test_hostile_bytes_parse_or_raise_uki_format_error(junk: bytes, at: int, patch: bytes) -> None:
    """Any input either parses or raises UkiFormatError -- never IndexError/struct.error."""
    base = bytearray(fake_uki())
    base[at : at + len(patch)] = patch
    for data in (bytes(junk), bytes(base), bytes(base[: at + 64])):
        with contextlib.suppress(UkiFormatError):
            uki.predict_pcrs(data)


def test_rejects_section_larger_in_memory_than_on_disk() -> None:
    image = make_pe(
        [(".linux", make_pe([(".text", b"k")])), (".initrd", b"x" * 10)],
        vsizes={".initrd": 1 << 30},
    )
    with pytest.raises(UkiFormatError, match="VirtualSize"):
        uki.predict_pcrs(image)


@pytest.mark.skipif(not STUB.exists(), reason="systemd-boot-efi is not installed")
def test_parses_debian_systemd_stub() -> None:
    pe = uki.parse_pe(STUB.read_bytes())
    assert pe.section(".sdmagic") is not None
    assert len(uki.authenticode_digest(STUB.read_bytes())) == 32
