"""attest.cmw: RATS Conceptual Messages Wrapper (RFC 9999) round trips, the published vectors of
another implementation (veraison/cmw, tests/unit/fixtures/cmw/README.md), and hostile input
refused with the one documented error."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import cmw
from attest.errors import CmwFormatError, EvidenceFormatError

VECTORS = Path(__file__).parent / "fixtures" / "cmw"
DOC = json.dumps({"version": 1, "node_id": "n1", "quote": {"attest": "AA=="}}).encode()


def test_cmw_error_is_an_evidence_format_error() -> None:
    assert issubclass(CmwFormatError, EvidenceFormatError)


@pytest.mark.parametrize("encode", [cmw.encode_json, cmw.encode_cbor])
def test_evidence_record_and_pair_round_trip(encode: object) -> None:
    assert callable(encode)
    record = cmw.evidence_record(DOC)
    assert cmw.decode(encode(record)) == record
    pair = cmw.pair_collection(DOC, DOC + b" ")
    back = cmw.decode(encode(pair))
    assert back == pair and isinstance(back, cmw.Collection)
    assert back.ctype == cmw.PAIR_COLLECTION_TYPE
    saved = cmw.read_saved_evidence(encode(pair))
    assert saved.is_pair and saved.layers == {"host": DOC, "guest": DOC + b" "}


def test_json_record_is_the_drafts_array_with_unpadded_base64url() -> None:
    raw = json.loads(cmw.encode_json(cmw.evidence_record(b"\xfb\xff")))
    assert raw == ["application/vnd.attest.evidence+json", "-_8", 4]


def test_cbor_record_is_an_array_with_a_byte_string() -> None:
    raw = cbor2.loads(cmw.encode_cbor(cmw.evidence_record(DOC)))
    assert raw == ["application/vnd.attest.evidence+json", DOC, 4]


def test_plain_evidence_document_is_read_as_is() -> None:
    saved = cmw.read_saved_evidence(b"  " + DOC)
    assert saved.form == "json" and saved.layers == {"node": b"  " + DOC}


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda s: s.strip() and s != "__cmwc_t"),
        st.tuples(st.binary(min_size=1, max_size=32), st.none() | st.integers(1, 31)),
        min_size=1,
        max_size=5,
    )
)
@settings(max_examples=50, deadline=None)
def test_any_collection_round_trips_in_both_serialisations(
    items: dict[str, tuple[bytes, int | None]],
) -> None:
    c = cmw.Collection(
        {k: cmw.Record("application/vnd.x+json", v, ind) for k, (v, ind) in items.items()},
        "1.2.3.4",
    )
    assert cmw.decode_json(cmw.encode_json(c)) == c
    assert cmw.decode_cbor(cmw.encode_cbor(c)) == c


# --- another implementation's vectors (veraison/cmw testdata, Apache-2.0) ----------------------


def test_veraison_json_collection_decodes() -> None:
    c = cmw.decode((VECTORS / "veraison-collection-ok.json").read_bytes())
    assert c == cmw.Collection(
        {"a": cmw.Record("application/vnd.a", b"a"), "b": cmw.Record("application/vnd.b", b"b")}
    )


def test_veraison_cbor_collection_with_a_tag_and_content_formats_decodes() -> None:
    c = cmw.decode((VECTORS / "veraison-collection-cbor-ok.cbor").read_bytes())
    assert isinstance(c, cmw.Collection) and c.ctype is None
    assert c.items[1] == cmw.Record(
        "application/signed-corim+cbor", bytes.fromhex("d28443a10126a1"), 3
    )
    # the CBOR tag 1668576818 is Content-Format 29884 (RFC 9277; veraison's test says so too)
    assert c.items[2] == cmw.Record(29884, bytes.fromhex("2347da55"))
    assert c.items["s"] == cmw.Record(30001, bytes.fromhex("2347da55"))


def test_veraison_cbor_collections_with_mixed_labels_decode() -> None:
    c = cmw.decode((VECTORS / "veraison-collection-cbor-mixed-keys.cbor").read_bytes())
    assert c == cmw.Collection({"string": cmw.Record(0, b"\xff"), 1024: cmw.Record(0, b"\xaa")})
    c2 = cmw.decode((VECTORS / "veraison-collection-cbor-ok-2.cbor").read_bytes())
    assert c2 == cmw.Collection({1: cmw.Record("application/vnd.1", bytes.fromhex("deadbeef"))})


def test_veraison_collection_and_tunnel_example_decodes() -> None:
    """veraison/cmw testdata/collection-and-tunnel.diag, transcribed: a typed collection with a
    Content-Format record, a tag CMW and a JSON record tunnelled into CBOR."""
    data = cbor2.dumps(
        {
            "__cmwc_t": "tag:example.com,2024:composite-attester",
            0: [30001, bytes.fromhex("2347da55"), 4],
            1: cbor2.CBORTag(1668576935, bytes.fromhex("2347da55")),
            2: ["#cmw-j2c-tunnel", b'[ "application/eat+jwt", "Li4u", 8 ]'],
        }
    )
    c = cmw.decode(data)
    assert isinstance(c, cmw.Collection)
    assert c.ctype == "tag:example.com,2024:composite-attester"
    assert c.items[0] == cmw.Record(30001, bytes.fromhex("2347da55"), 4)
    assert c.items[2] == cmw.Record("application/eat+jwt", b"...", 8)


def test_collections_nest_up_to_the_limit() -> None:
    c = cmw.decode(_deep_json(cmw.MAX_DEPTH))
    for _ in range(cmw.MAX_DEPTH):
        assert isinstance(c, cmw.Collection)
        c = c.items["l"]
    assert c == cmw.Record("application/vnd.x", b"a")


def test_c2j_tunnel_inside_a_json_collection_decodes() -> None:
    inner = cmw.encode_cbor(cmw.Record(60, b"\x01"))
    outer = json.dumps({"x": ["#cmw-c2j-tunnel", cmw.b64url(inner)]}).encode()
    assert cmw.decode(outer) == cmw.Collection({"x": cmw.Record(60, b"\x01")})


# --- hostile input: CmwFormatError, and nothing else --------------------------------------------


def _deep_json(levels: int) -> bytes:
    inner: object = ["application/vnd.x", "YQ"]
    for _ in range(levels):
        inner = {"__cmwc_t": "1.2.3", "l": inner}
    return json.dumps(inner).encode()


HOSTILE = {
    "wrong record type": json.dumps(["application/json", cmw.b64url(DOC), 4]).encode(),
    "type is not a media type": json.dumps(["not a type", "YQ"]).encode(),
    "number type in JSON": json.dumps([50, "YQ"]).encode(),
    "padded base64url": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YQ=="]).encode(),
    "standard base64 alphabet": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "+/8"]).encode(),
    "non-canonical base64url": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YR"]).encode(),
    "base64url of length 1 mod 4": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YWJjZ"]).encode(),
    "empty value": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, ""]).encode(),
    "zero indicator": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YQ", 0]).encode(),
    "indicator out of range": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YQ", 32]).encode(),
    "boolean indicator": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YQ", True]).encode(),
    "four elements": json.dumps([cmw.EVIDENCE_MEDIA_TYPE, "YQ", 4, 4]).encode(),
    "nested depth": _deep_json(cmw.MAX_DEPTH + 1),
    "json nested past the recursion limit": b"[" * 100_000,
    "cbor nested past the limit": b"\x81" * 10_000,
    "oversize": b"[" + b" " * cmw.MAX_CMW_BYTES + b"]",
    "wrong collection type": json.dumps(
        {
            "__cmwc_t": "tag:example.com,2024:other",
            "host": [cmw.EVIDENCE_MEDIA_TYPE, "YQ", 4],
            "guest": [cmw.EVIDENCE_MEDIA_TYPE, "YQ", 4],
        }
    ).encode(),
    "collection type neither URI nor OID": json.dumps(
        {"__cmwc_t": "no", "host": [cmw.EVIDENCE_MEDIA_TYPE, "YQ"]}
    ).encode(),
    "pair missing its guest": json.dumps(
        {"__cmwc_t": cmw.PAIR_COLLECTION_TYPE, "host": [cmw.EVIDENCE_MEDIA_TYPE, "YQ", 4]}
    ).encode(),
    "empty collection": json.dumps({"__cmwc_t": cmw.PAIR_COLLECTION_TYPE}).encode(),
    "whitespace label": json.dumps({"__cmwc_t": "1.2", " ": ["a/b", "YQ"]}).encode(),
    "duplicate key": b'{"__cmwc_t":"1.2","a":["a/b","YQ"],"a":["a/b","Yg"]}',
    "tunnel at the top": json.dumps(["#cmw-c2j-tunnel", "gkFhQWE"]).encode(),
    "not json": b"[\xff",
    "cbor trailing bytes": cbor2.dumps(["a/b", b"a"]) + b"\x00",
    "cbor unknown tag": cbor2.dumps(cbor2.CBORTag(24, b"a")),
    "cbor tag of a non-bstr": cbor2.dumps(cbor2.CBORTag(1668546817, "a")),
    "cbor value is text": cbor2.dumps(["a/b", "a"]),
    "cbor content-format out of range": cbor2.dumps([70000, b"a"]),
    "cbor duplicate map key": bytes.fromhex("a2") + (cbor2.dumps(1) + cbor2.dumps([0, b"a"])) * 2,
    "cbor truncated": cbor2.dumps(["a/b", b"abc"])[:-1],
    "empty": b"",
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_refused_with_the_one_error(data: bytes) -> None:
    with pytest.raises(CmwFormatError):
        cmw.read_saved_evidence(data)


@given(st.binary(max_size=256))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_raise_the_one_error(data: bytes) -> None:
    with contextlib.suppress(CmwFormatError):
        cmw.decode(data)


def test_evidence_document_is_bounded_as_the_live_answer_is() -> None:
    from attest.evidence import MAX_EVIDENCE_BYTES

    big = b'{"a":"' + b"x" * MAX_EVIDENCE_BYTES + b'"}'
    saved = cmw.read_saved_evidence(cmw.encode_json(cmw.evidence_record(big)))
    with pytest.raises(CmwFormatError, match="over"):
        cmw.evidence_document(saved.layers["node"])
    assert cmw.evidence_document(b'{"version": 1}') == {"version": 1}
    with pytest.raises(CmwFormatError):
        cmw.evidence_document(b"[1]")


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(CmwFormatError):
        cmw.encode_json(cmw.Record(50, b"a"))
    with pytest.raises(CmwFormatError):
        cmw.encode_cbor(cmw.Record("a/b", b""))
    with pytest.raises(CmwFormatError):
        cmw.encode_json(cmw.Collection({}, "1.2"))


@pytest.mark.parametrize(
    "accept,want",
    [
        (None, None),
        ("*/*", None),
        ("application/json", None),
        ("application/cmw+json", cmw.CMW_JSON),
        ("Application/CMW+CBOR; q=0.8", cmw.CMW_CBOR),
        ("application/cmw+json;q=0.5, application/cmw+cbor", cmw.CMW_CBOR),
        ("application/cmw+json;q=0", None),
        ("application/json, application/cmw+json", None),
        ("application/cmw+json, application/json", cmw.CMW_JSON),
    ],
)
def test_accept_header_negotiation(accept: str | None, want: str | None) -> None:
    assert cmw.negotiate(accept) == want


def test_b64url_helper_matches_the_standard_library() -> None:
    assert cmw.b64url(b"\xfb\xff\x00") == base64.urlsafe_b64encode(b"\xfb\xff\x00").decode()
