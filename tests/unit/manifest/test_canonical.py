"""RFC 8785 canonicalisation and the strict JSON reader."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ManifestFormatError
from attest.manifest.canonical import MAX_SAFE_INTEGER, canonicalize, parse_canonical, parse_json

LIMIT = 1 << 20


def test_rfc8785_sorts_members_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3 example: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    doc = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}
    out = canonicalize(doc).decode()
    order = [k for k in json.loads(out)]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_rfc8785_string_escaping() -> None:
    # RFC 8785 §3.2.2.2: short escapes, \u00xx lower-case for other controls, '/' and DEL literal.
    s = '\u20ac$\u000f\nA\'B"\\\\"/\x7f\u2028'
    assert canonicalize(s) == ('"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/\x7f\u2028"').encode()


def test_canonical_has_no_whitespace_and_literal_forms() -> None:
    assert canonicalize({"b": [1, True, None], "a": {"z": False, "y": -5}}) == (
        b'{"a":{"y":-5,"z":false},"b":[1,true,null]}'
    )


def test_rejects_non_canonical_document() -> None:
    data = b'{"a": 1}'
    assert parse_json(data, max_size=LIMIT) == {"a": 1}
    with pytest.raises(ManifestFormatError, match="canonical"):
        parse_canonical(data, max_size=LIMIT)
    with pytest.raises(ManifestFormatError, match="canonical"):
        parse_canonical(b'{"b":1,"a":2}', max_size=LIMIT)
    assert parse_canonical(b'{"a":2,"b":1}', max_size=LIMIT) == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1.5}',
        b'{"a":1e3}',
        b"NaN",
        b'{"a":Infinity}',
        b'{"a":1,"a":2}',
        b'"\\ud800"',
        b"\xff",
        b"[" * 40 + b"]" * 40,
        b'{"a":9007199254740992}',
        b"1" * 5000,
        b"",
        b"{",
        b'{"a":-9007199254740992}',
    ],
)
def test_strict_reader_refuses(data: bytes) -> None:
    with pytest.raises(ManifestFormatError):
        parse_json(data, max_size=LIMIT)


def test_endless_data_size_checked_before_parsing() -> None:
    with pytest.raises(ManifestFormatError, match="limit"):
        parse_json(b"[" + b"1," * 1000 + b"1]", max_size=100)


def test_canonicalize_refuses_floats_and_big_ints() -> None:
    with pytest.raises(ManifestFormatError):
        canonicalize({"a": 0.5})
    with pytest.raises(ManifestFormatError):
        canonicalize(MAX_SAFE_INTEGER + 1)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_round_trip(value: object) -> None:
    data = canonicalize(value)
    assert parse_canonical(data, max_size=LIMIT) == value
    assert canonicalize(json.loads(data)) == data
    # Any other serialisation parses to the same value and canonicalises to the same bytes.
    pretty = json.dumps(value, indent=1, ensure_ascii=True).encode()
    assert canonicalize(parse_json(pretty, max_size=LIMIT)) == data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_reader_parses_or_raises_format_error(data: bytes) -> None:
    with contextlib.suppress(ManifestFormatError):
        parse_canonical(data, max_size=LIMIT)
