"""The bounded TPM structure parsers: real structures round-trip; hostile bytes raise
QuoteFormatError and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from attest.errors import QuoteFormatError
from attest.model import HashAlg, PcrSelection
from attest.node.tpm.fake import FakeTpm
from attest.tpmstruct import (
    Alg,
    parse_attest,
    parse_public,
    parse_signature,
    read_tpml_digest_values,
)

SEL = PcrSelection.parse("sha256:0-7+sha1:0,7")


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, bytes, bytes]:
    tpm = FakeTpm()
    q = tpm.quote(SEL, b"n" * 32)
    return q.attest, q.signature, tpm.ak_public().tpm2b()


def test_attest_round_trip(sample: tuple[bytes, bytes, bytes]) -> None:
    a = parse_attest(sample[0])
    assert a.pcr_select == SEL
    assert a.extra_data == b"n" * 32
    assert a.raw == sample[0]


def test_public_both_encodings(sample: tuple[bytes, bytes, bytes]) -> None:
    sized = sample[2]
    p1 = parse_public(sized)
    p2 = parse_public(sized[2:])
    assert p1.raw == p2.raw == sized[2:]
    assert p1.type == Alg.ECC and p1.name_alg == HashAlg.SHA256
    assert p1.name == p2.name and len(p1.name) == 34


def test_rejects_unknown_curve(sample: tuple[bytes, bytes, bytes]) -> None:
    raw = bytearray(sample[2][2:])
    # curveID sits after type, nameAlg, attributes, authPolicy(2), symmetric(2), scheme(4)
    off = 2 + 2 + 4 + 2 + 2 + 4
    assert raw[off : off + 2] == b"\x00\x03"
    raw[off : off + 2] = b"\x00\x99"
    with pytest.raises(QuoteFormatError, match="curve"):
        parse_public(bytes(raw), sized=False)


def test_rejects_invalid_ecc_point(sample: tuple[bytes, bytes, bytes]) -> None:
    raw = bytearray(sample[2][2:])
    raw[-1] ^= 1  # y no longer on the curve
    pub = parse_public(bytes(raw), sized=False)
    with pytest.raises(QuoteFormatError, match="no valid public key"):
        _ = pub.key


def test_selection_rejects_duplicate_bank() -> None:
    body = (2).to_bytes(4, "big") + (b"\x00\x0b\x03\x01\x00\x00" * 2)
    from attest.tpmstruct import Reader, read_pcr_selection

    with pytest.raises(QuoteFormatError, match="twice"):
        read_pcr_selection(Reader(body, "t"))


def test_selection_rejects_pcr_beyond_23() -> None:
    from attest.tpmstruct import Reader, read_pcr_selection

    body = (1).to_bytes(4, "big") + b"\x00\x0b\x04\x00\x00\x00\x01"
    with pytest.raises(QuoteFormatError, match="PCR 24"):
        read_pcr_selection(Reader(body, "t"))


def test_values_file_must_match_selection_length() -> None:
    sel = PcrSelection.parse("sha256:0,1")
    assert read_tpml_digest_values(bytes(64), sel)[HashAlg.SHA256][1] == bytes(32)
    with pytest.raises(QuoteFormatError):
        read_tpml_digest_values(bytes(63), sel)
    with pytest.raises(QuoteFormatError, match="trailing"):
        read_tpml_digest_values(bytes(65), sel)


def test_selection_text_forms() -> None:
    assert str(PcrSelection.parse("sha256:0-2,7+sha1:all")).startswith("sha256:0,1,2,7+sha1:0,1")
    for bad in ("sha256", "md5:0", "sha256:24", "sha256:0+sha256:1", "sha256:"):
        with pytest.raises(ValueError):
            PcrSelection.parse(bad)


PARSERS = (parse_attest, parse_signature, parse_public)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Real structures with bytes flipped, cut or inserted: the inputs that reach deep."""
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, max(len(data) - 1, 0)).map(lambda n: data[:n]),
        st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)).map(
            lambda t: data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=8)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
    )


_REAL = FakeTpm().quote(SEL, b"x" * 16)
_AK = FakeTpm().ak_public().tpm2b()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutations(_REAL.attest), _mutations(_REAL.signature), _mutations(_AK)))
@example(b"")
@example(b"\xff" * 4096)
@example(b"\xffTCG\x80\x18" + b"\xff\xff" * 10)
def test_parsers_raise_only_quote_format_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(QuoteFormatError):
            parse(data)
