"""A bounded DER/BER reader, and the DER re-encoding of what it read (X.690).

``read`` parses one element into a tree of ``Tlv`` nodes that keep their offsets into the
original bytes, so a signature can be checked over exactly the bytes that were signed.
``encode`` writes a node back in DER: minimal definite lengths, SET OF members in DER order
(X.690 §11.6), BOOLEAN TRUE as 0xFF (§11.1), INTEGERs without redundant leading octets. Every
rewrite is recorded as a named ``Tolerated`` deviation, so the caller can report what it
accepted. Schema-dependent rewrites (explicitly encoded DEFAULT values) live with the schema
in ``attest.ekcert.parse``.

Bounds: nesting depth, length-octet count, tag-number size and element count are all capped;
anything outside them, or any malformed encoding, raises ``CertificateFormatError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from attest.errors import CertificateFormatError

MAX_DEPTH = 32  # X.509 certificates nest about 12 deep
MAX_ELEMENTS = 20_000
_MAX_LENGTH_OCTETS = 4
_MAX_TAG_OCTETS = 4

# Universal tag numbers (X.680 §8.4).
BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 1, 2, 3, 4, 5, 6
SEQUENCE, SET = 16, 17
UNIVERSAL, CONTEXT = 0, 2
# Universal types that are primitive in DER; BER allows constructed strings, which no
# certificate seen uses: refused rather than half-supported.
_PRIMITIVE_ONLY = frozenset({BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID, 10, 12, 13})
_PRIMITIVE_ONLY |= frozenset(range(18, 31))


class Deviation(StrEnum):
    """A departure from DER or RFC 5280 that real EK certificates carry and attest tolerates."""

    TRAILING_DATA = "trailing-data"  # NV padding after the certificate (0xFF or 0x00 fill)
    NON_MINIMAL_LENGTH = "non-minimal-length"  # long-form length where short form fits
    INDEFINITE_LENGTH = "indefinite-length"  # BER indefinite length with end-of-contents
    SET_ORDER = "set-order"  # SET OF members not in DER order (multi-valued RDNs)
    EXPLICIT_DEFAULT = "explicit-default"  # a DEFAULT value encoded (critical FALSE, cA FALSE)
    BOOLEAN_ENCODING = "boolean-encoding"  # TRUE encoded as a non-0xFF octet
    NON_MINIMAL_INTEGER = "non-minimal-integer"  # redundant leading 0x00/0xFF octets
    ECDSA_PARAMETERS = "ecdsa-parameters"  # ecdsa-with-SHA* with parameters (RFC 5758 §3.2)


@dataclass(frozen=True, slots=True)
class Tolerated:
    """One tolerated deviation and where it was seen."""

    deviation: Deviation
    detail: str


class Tlv(NamedTuple):
    """One element: its identifier octets, where it lies in the buffer, and its contents
    (``content`` for a primitive element, ``children`` for a constructed one)."""

    ident: bytes
    cls: int
    constructed: bool
    number: int
    start: int
    end: int
    content: bytes
    children: tuple[Tlv, ...]

    def is_universal(self, number: int) -> bool:
        return self.cls == UNIVERSAL and self.number == number

    def is_context(self, number: int) -> bool:
        return self.cls == CONTEXT and self.number == number


class _Reader:
    def __init__(self, buf: bytes, found: list[Tolerated]) -> None:
        self.buf = buf
        self.found = found
        self.elements = 0

    def fail(self, pos: int, what: str) -> CertificateFormatError:
        return CertificateFormatError(f"malformed ASN.1 at offset {pos}: {what}")

    def byte(self, pos: int, end: int) -> int:
        if pos >= end:
            raise self.fail(pos, "truncated")
        return self.buf[pos]

    def identifier(self, pos: int, end: int) -> tuple[int, bool, int, int]:
        """(class, constructed, tag number, offset after the identifier octets)."""
        first = self.byte(pos, end)
        cls, constructed, number = first >> 6, bool(first & 0x20), first & 0x1F
        pos += 1
        if number == 0x1F:  # high-tag-number form (X.690 §8.1.2.4)
            number = 0
            for i in range(_MAX_TAG_OCTETS + 1):
                if i == _MAX_TAG_OCTETS:
                    raise self.fail(pos, "tag number too large")
                b = self.byte(pos, end)
                pos += 1
                number = (number << 7) | (b & 0x7F)
                if not b & 0x80:
                    break
        return cls, constructed, number, pos

    def length(self, pos: int, end: int, constructed: bool) -> tuple[int | None, int]:
        """(length or None when indefinite, offset after the length octets)."""
        first = self.byte(pos, end)
        pos += 1
        if first < 0x80:
            return first, pos
        if first == 0x80:
            if not constructed:
                raise self.fail(pos - 1, "indefinite length on a primitive element")
            self.found.append(Tolerated(Deviation.INDEFINITE_LENGTH, f"offset {pos - 1}"))
            return None, pos
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS or first == 0xFF:
            raise self.fail(pos - 1, f"length of {count} octets")
        if pos + count > end:
            raise self.fail(pos, "truncated length")
        value = int.from_bytes(self.buf[pos : pos + count], "big")
        if value < 0x80 or self.buf[pos] == 0:
            self.found.append(Tolerated(Deviation.NON_MINIMAL_LENGTH, f"offset {pos - 1}"))
        return value, pos + count

    def element(self, pos: int, end: int, depth: int) -> Tlv:
        if depth > MAX_DEPTH:
            raise self.fail(pos, f"nested deeper than {MAX_DEPTH}")
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise self.fail(pos, f"more than {MAX_ELEMENTS} elements")
        start = pos
        buf = self.buf
        if pos >= end:
            raise self.fail(pos, "truncated")
        first = buf[pos]
        if first & 0x1F == 0x1F:  # high-tag-number form
            cls, constructed, number, pos = self.identifier(pos, end)
        else:  # one identifier octet: the usual case, read here without a call
            cls, constructed, number, pos = first >> 6, bool(first & 0x20), first & 0x1F, pos + 1
        if cls == UNIVERSAL:
            if number == 0:
                raise self.fail(start, "unexpected end-of-contents")
            if constructed and number in _PRIMITIVE_ONLY:
                raise self.fail(start, f"constructed encoding of universal type {number}")
            if not constructed and number in (SEQUENCE, SET):
                raise self.fail(start, "primitive SEQUENCE or SET")
        ident = buf[start:pos]
        if pos < end and buf[pos] < 0x80:  # short form: the usual case, read without a call
            length: int | None = buf[pos]
            pos += 1
        else:
            length, pos = self.length(pos, end, constructed)
        if length is None:
            children, after = self.until_eoc(pos, end, depth)
            return Tlv(ident, cls, constructed, number, start, after, b"", children)
        if pos + length > end:
            raise self.fail(start, f"length {length} runs past the enclosing element")
        stop = pos + length
        if not constructed:
            return Tlv(ident, cls, False, number, start, stop, buf[pos:stop], ())
        children_list = []
        while pos < stop:
            child = self.element(pos, stop, depth + 1)
            children_list.append(child)
            pos = child.end
        return Tlv(ident, cls, True, number, start, stop, b"", tuple(children_list))

    def until_eoc(self, pos: int, end: int, depth: int) -> tuple[tuple[Tlv, ...], int]:
        children: list[Tlv] = []
        while True:
            if self.buf[pos : pos + 2] == b"\0\0" and pos + 2 <= end:
                return tuple(children), pos + 2
            child = self.element(pos, end, depth + 1)
            children.append(child)
            pos = child.end


def read(buf: bytes, found: list[Tolerated], *, start: int = 0) -> Tlv:
    """Parse the one element at ``start``; it may end before ``len(buf)`` (the caller decides
    what trailing bytes mean). BER deviations met on the way are appended to ``found``."""
    return _Reader(buf, found).element(start, len(buf), 0)


def read_exactly(buf: bytes, found: list[Tolerated]) -> Tlv:
    """Parse ``buf`` as exactly one element."""
    node = read(buf, found)
    if node.end != len(buf):
        raise CertificateFormatError(f"{len(buf) - node.end} bytes after the ASN.1 element")
    return node


def header(ident: bytes, length: int) -> bytes:
    """Identifier and minimal definite length octets (X.690 §10.1)."""
    if length < 0x80:
        return ident + bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return ident + bytes([0x80 | len(octets)]) + octets


def sequence(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return header(b"\x30", len(body)) + body


def _integer_content(content: bytes, found: list[Tolerated], where: str) -> bytes:
    if not content:
        raise CertificateFormatError(f"empty INTEGER in {where}")
    i = 0
    # X.690 §8.3.2: the first nine bits are not all zeros or all ones.
    while i + 1 < len(content) and (
        (content[i] == 0 and content[i + 1] < 0x80)
        or (content[i] == 0xFF and content[i + 1] >= 0x80)
    ):
        i += 1
    if i:
        found.append(Tolerated(Deviation.NON_MINIMAL_INTEGER, where))
    return content[i:]


def encode(node: Tlv, found: list[Tolerated], where: str) -> bytes:
    """``node`` re-encoded in DER; every rewrite is appended to ``found`` naming ``where``."""
    if not node.constructed:
        content = node.content
        if node.is_universal(BOOLEAN):
            if len(content) != 1:
                raise CertificateFormatError(f"BOOLEAN of {len(content)} octets in {where}")
            if content[0] not in (0x00, 0xFF):
                found.append(Tolerated(Deviation.BOOLEAN_ENCODING, where))
                content = b"\xff"
        elif node.is_universal(INTEGER):
            content = _integer_content(content, found, where)
        return header(node.ident, len(content)) + content
    parts = [encode(child, found, where) for child in node.children]
    if node.is_universal(SET):
        ordered = sorted(parts)
        if ordered != parts:
            found.append(Tolerated(Deviation.SET_ORDER, where))
            parts = ordered
    body = b"".join(parts)
    return header(node.ident, len(body)) + body
