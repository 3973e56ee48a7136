"""RATS Conceptual Messages Wrapper (CMW) for attest's evidence. Pure.

CMW is RFC 9999 (draft-ietf-rats-msg-wrap-23, section 3): a *record* wraps one conceptual
message with its type, a *collection* groups CMWs under labels. attest reads and writes both
serialisations::

    json-record = [type: media-type, value: base64url (no padding), ? ind: uint]
    cbor-record = [type: CoAP Content-Format uint / media-type, value: bstr, ? ind: uint]
    json-collection = {? "__cmwc_t": absolute URI / OID, + text label => json-cmw}
    cbor-collection = {? "__cmwc_t": absolute URI / OID, + int / text label => cbor-cmw}

and reads (never writes) the CBOR tag form ``#6.TN(bstr)`` (TN from a Content-Format, RFC 9277)
and the tunnels ``["#cmw-c2j-tunnel", base64url CBOR CMW]`` (inside a JSON collection) and
``["#cmw-j2c-tunnel", bstr JSON CMW]`` (inside a CBOR collection). ``ind`` is the bit set of
conceptual message kinds (bit 0 reference values, 1 endorsements, 2 evidence, 3 attestation
results, 4 trust anchors): non-zero when present, at most 31.

attest's evidence (the ``POST /v1/evidence`` answer, ``attest.evidence``) is a record of type
``application/vnd.attest.evidence+json`` (a vendor-tree media type, not registered; it has no
CoAP Content-Format, so the CBOR record names it by string) with ``ind`` 4 (evidence); a host and
its guest (docs/host-guest.md) are a collection of type ``PAIR_COLLECTION_TYPE`` with the
members ``host`` and ``guest``. The CMW's own media types are ``application/cmw+json`` and
``application/cmw+cbor`` (RFC 9999 section 10). docs/cmw.md has the details.

The decoder is bounded and fails closed: at most ``MAX_CMW_BYTES``, ``MAX_DEPTH`` nested
collections, ``MAX_ITEMS`` members per collection; duplicate keys, unknown tags, a wrong
alphabet or padding in base64url, an empty value, a zero indicator -- anything else than the
grammar above raises ``CmwFormatError`` (an ``EvidenceFormatError``), and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from attest.errors import CmwFormatError
from attest.evidence import MAX_EVIDENCE_BYTES

CMW_JSON = "application/cmw+json"
CMW_CBOR = "application/cmw+cbor"
EVIDENCE_MEDIA_TYPE = "application/vnd.attest.evidence+json"
# attest's label for a host+guest collection (a tag URI, RFC 4151; ``.invalid``: attest owns no
# domain to mint it under).
PAIR_COLLECTION_TYPE = "tag:attest.invalid,2026:host-guest"
HOST = "host"
GUEST = "guest"

IND_REFERENCE_VALUES = 1 << 0
IND_ENDORSEMENTS = 1 << 1
IND_EVIDENCE = 1 << 2
IND_ATTESTATION_RESULTS = 1 << 3
IND_TRUST_ANCHORS = 1 << 4
MAX_IND = 0b11111

# Two evidence documents of the most the verifier reads (a pair), in base64url, and room for
# the wrapping: about 21.4 MiB.
MAX_CMW_BYTES = 2 * (MAX_EVIDENCE_BYTES * 4 // 3 + 4) + (64 << 10)
MAX_DEPTH = 4  # nested collections (tunnels count as a level)
MAX_ITEMS = 64  # members of one collection
MAX_LABEL = 256  # characters of a text label
MAX_TYPE = 256  # characters of a media type or collection type

CTYPE_KEY = "__cmwc_t"
C2J_TUNNEL = "#cmw-c2j-tunnel"
J2C_TUNNEL = "#cmw-j2c-tunnel"

# RFC 9277 section 4.3: CBOR tag numbers of CoAP Content-Formats 0..65024.
_TN_MIN = 1668546817
_TN_MAX = 1668612095
_CF_MAX = 65535

_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f]*\"))*"
)
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]{0,30})){1,63}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Record:
    """One conceptual message: its type (a media type, or a CoAP Content-Format number), its
    bytes and its kinds (``IND_*`` bits; None: not said)."""

    type: str | int
    value: bytes
    ind: int | None = None


@dataclass(frozen=True, slots=True)
class Collection:
    """Labelled CMWs, with the collection's type (an absolute URI or an OID) when it has one."""

    items: Mapping[str | int, Record | Collection]
    ctype: str | None = None


Cmw = Record | Collection


# --- encoding --------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_record(r: Record) -> None:
    if isinstance(r.type, str):
        _media_type(r.type)
    elif not (type(r.type) is int and 0 <= r.type <= _CF_MAX):
        raise CmwFormatError(f"CMW type {r.type!r} is neither a media type nor a Content-Format")
    if not r.value:
        raise CmwFormatError("a CMW record's value is empty")
    if r.ind is not None:
        _ind(r.ind)


def _json_item(c: Cmw) -> Any:
    if isinstance(c, Record):
        _check_record(c)
        if not isinstance(c.type, str):
            raise CmwFormatError("a JSON CMW record's type is a media type, not a number")
        rec: list[Any] = [c.type, b64url(c.value)]
        return rec if c.ind is None else [*rec, c.ind]
    out: dict[str, Any] = {} if c.ctype is None else {CTYPE_KEY: _ctype(c.ctype)}
    for label, item in _labelled(c):
        if not isinstance(label, str):
            raise CmwFormatError("a JSON CMW collection's labels are text")
        out[label] = _json_item(item)
    return out


def _cbor_item(c: Cmw) -> Any:
    if isinstance(c, Record):
        _check_record(c)
        rec: list[Any] = [c.type, c.value]
        return rec if c.ind is None else [*rec, c.ind]
    out: dict[str | int, Any] = {} if c.ctype is None else {CTYPE_KEY: _ctype(c.ctype)}
    for label, item in _labelled(c):
        out[label] = _cbor_item(item)
    return out


def _labelled(c: Collection) -> list[tuple[str | int, Cmw]]:
    if not c.items or len(c.items) > MAX_ITEMS:
        raise CmwFormatError(f"a CMW collection has 1 to {MAX_ITEMS} members")
    for label in c.items:
        _label(label)
    return list(c.items.items())


def encode_json(c: Cmw) -> bytes:
    """The JSON serialisation (``application/cmw+json``), compact."""
    return json.dumps(_json_item(c), separators=(",", ":")).encode()


def encode_cbor(c: Cmw) -> bytes:
    """The CBOR serialisation (``application/cmw+cbor``): records as arrays, never tags."""
    return bytes(cbor2.dumps(_cbor_item(c)))


def encode(c: Cmw, media_type: str) -> bytes:
    """``encode_json`` or ``encode_cbor`` by the CMW media type ``CMW_JSON`` / ``CMW_CBOR``."""
    if media_type == CMW_JSON:
        return encode_json(c)
    if media_type == CMW_CBOR:
        return encode_cbor(c)
    raise ValueError(f"{media_type!r} is not a CMW media type")


# --- decoding --------------------------------------------------------------------------------


def _media_type(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TYPE or not _MEDIA_TYPE.fullmatch(value):
        raise CmwFormatError(f"CMW type {str(value)[:64]!r} is not a media type")
    return value


def _ctype(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_TYPE
        or not (_OID.fullmatch(value) or _URI.fullmatch(value))
    ):
        raise CmwFormatError(
            f"CMW collection type {str(value)[:64]!r} is neither an absolute URI nor an OID"
        )
    return value


def _ind(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_IND:
        raise CmwFormatError(f"CMW indicator {str(value)[:16]!r} is not an integer in 1..31")
    return value


def _label(value: object) -> str | int:
    if type(value) is int:
        if not -(2**63) <= value < 2**64:
            raise CmwFormatError("a CMW collection label is out of range")
        return value
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_LABEL
        or value == CTYPE_KEY
    ):
        raise CmwFormatError(f"CMW collection label {str(value)[:64]!r} is not a usable label")
    return value


def _unb64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_CMW_BYTES or not _B64URL.fullmatch(value):
        raise CmwFormatError(f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise CmwFormatError(f"{what} is not valid base64url") from None
    if b64url(data) != value:  # a length of 1 mod 4, or stray bits in the last character
        raise CmwFormatError(f"{what} is not canonical base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise CmwFormatError("a JSON object of the CMW repeats a key")
    return out


def _json(data: bytes) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise CmwFormatError("the CMW is not well-formed JSON") from None


def _cbor(data: bytes) -> Any:
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            fp, max_depth=2 * MAX_DEPTH + 4, allow_duplicate_keys=False
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise CmwFormatError("the CMW is not well-formed CBOR") from None
    if fp.tell() != len(data):
        raise CmwFormatError("the CMW has bytes after its CBOR item")
    return item


def _size(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_CMW_BYTES:
        raise CmwFormatError(f"a CMW is bytes of at most {MAX_CMW_BYTES} bytes")
    return bytes(data)


def _from_json(item: object, depth: int) -> Cmw:
    if isinstance(item, list):
        if len(item) == 2 and item[0] == C2J_TUNNEL:
            if depth == 0:
                raise CmwFormatError("a CMW tunnel is only allowed inside a collection")
            return _next(_from_cbor, _cbor(_unb64url(item[1], "a C2J tunnel")), depth)
        if len(item) not in (2, 3):
            raise CmwFormatError("a JSON CMW record has 2 or 3 elements")
        ind = _ind(item[2]) if len(item) == 3 else None
        value = _unb64url(item[1], "a JSON CMW record's value")
        if not value:
            raise CmwFormatError("a CMW record's value is empty")
        return Record(_media_type(item[0]), value, ind)
    if isinstance(item, dict):
        return _collection(item, depth, _from_json)
    raise CmwFormatError("a JSON CMW is an array (record) or an object (collection)")


def _from_cbor(item: object, depth: int) -> Cmw:
    if isinstance(item, list):
        if len(item) == 2 and item[0] == J2C_TUNNEL:
            if depth == 0:
                raise CmwFormatError("a CMW tunnel is only allowed inside a collection")
            inner = item[1]
            if not isinstance(inner, bytes):
                raise CmwFormatError("a J2C tunnel does not hold a byte string")
            return _next(_from_json, _json(inner), depth)
        if len(item) not in (2, 3):
            raise CmwFormatError("a CBOR CMW record has 2 or 3 elements")
        t = item[0]
        if not (type(t) is int and 0 <= t <= _CF_MAX):
            t = _media_type(t)
        ind = _ind(item[2]) if len(item) == 3 else None
        value = item[1]
        if not isinstance(value, bytes) or not value:
            raise CmwFormatError("a CBOR CMW record's value is not a non-empty byte string")
        return Record(t, value, ind)
    if isinstance(item, cbor2.CBORTag):
        if not _TN_MIN <= item.tag <= _TN_MAX or not isinstance(item.value, bytes):
            raise CmwFormatError(f"CBOR tag {item.tag} is not a CMW tag of a byte string")
        off = item.tag - _TN_MIN  # RFC 9277 section 4.3: TN = TN_MIN + (cf // 255) * 256 + cf % 255
        if off % 256 == 255 or not item.value:
            raise CmwFormatError(f"CBOR tag {item.tag} is not a CMW tag of a byte string")
        return Record((off // 256) * 255 + off % 256, item.value)
    if isinstance(item, dict):
        return _collection(item, depth, _from_cbor)
    raise CmwFormatError("a CBOR CMW is an array (record), a tag or a map (collection)")


def _next(decode: Any, item: object, depth: int) -> Cmw:
    c: Cmw = decode(item, depth + 1)
    return c


def _collection(item: dict[Any, Any], depth: int, decode: Any) -> Collection:
    if depth >= MAX_DEPTH:
        raise CmwFormatError(f"CMW collections nest deeper than {MAX_DEPTH}")
    ctype = _ctype(item[CTYPE_KEY]) if CTYPE_KEY in item else None
    members = {k: v for k, v in item.items() if k != CTYPE_KEY}
    if not members or len(members) > MAX_ITEMS:
        raise CmwFormatError(f"a CMW collection has 1 to {MAX_ITEMS} members")
    items: dict[str | int, Cmw] = {}
    for k, v in members.items():
        items[_label(k)] = decode(v, depth + 1)
    return Collection(items, ctype)


def decode_json(data: bytes) -> Cmw:
    """A CMW in the JSON serialisation, or ``CmwFormatError``."""
    return _from_json(_json(_size(data)), 0)


def decode_cbor(data: bytes) -> Cmw:
    """A CMW in the CBOR serialisation (record, tag or collection), or ``CmwFormatError``."""
    return _from_cbor(_cbor(_size(data)), 0)


def is_json(data: bytes) -> bool:
    """Whether ``data`` is JSON text rather than CBOR: JSON CMWs and documents start (after
    white space) with ``[`` or ``{``, which as a first CBOR byte would be a byte or text
    string -- never a CMW."""
    head = bytes(data[:64]).lstrip(b" \t\r\n")
    return head[:1] in (b"[", b"{")


def decode(data: bytes) -> Cmw:
    """A CMW in either serialisation (told apart by ``is_json``)."""
    return decode_json(data) if is_json(data) else decode_cbor(data)


# --- attest's evidence as CMW ----------------------------------------------------------------


def evidence_record(document: bytes) -> Record:
    """The record of one evidence document (the JSON bytes of a ``POST /v1/evidence`` answer)."""
    return Record(EVIDENCE_MEDIA_TYPE, document, IND_EVIDENCE)


def pair_collection(host: bytes, guest: bytes) -> Collection:
    """The collection of a host's and its guest's evidence documents, answering one pair
    challenge (the host's nonce commits to the guest's document: ``attest.appraisal.pair.
    host_nonce``)."""
    return Collection(
        {HOST: evidence_record(host), GUEST: evidence_record(guest)}, PAIR_COLLECTION_TYPE
    )


def _evidence_bytes(c: Cmw, what: str) -> bytes:
    if not isinstance(c, Record):
        raise CmwFormatError(f"{what} is a collection, not an evidence record")
    if c.type != EVIDENCE_MEDIA_TYPE:
        raise CmwFormatError(
            f"{what} carries {str(c.type)[:64]!r}, not attest evidence ({EVIDENCE_MEDIA_TYPE})"
        )
    if c.ind is not None and not c.ind & IND_EVIDENCE:
        raise CmwFormatError(f"{what}'s indicator {c.ind} does not say evidence")
    return c.value


@dataclass(frozen=True, slots=True)
class SavedEvidence:
    """Evidence documents read back from a file, not yet parsed (``attest.evidence`` does
    that): one node's (``layers == {"node": ...}``) or a pair's (``{"host": ..., "guest":
    ...}``). ``form``: how the file held it (``json``, ``cmw+json``, ``cmw+cbor``)."""

    layers: Mapping[str, bytes]
    form: str

    @property
    def is_pair(self) -> bool:
        return set(self.layers) == {HOST, GUEST}


def read_saved_evidence(data: bytes) -> SavedEvidence:
    """The evidence of a file: a plain evidence document (a JSON object without
    ``__cmwc_t``, as ``POST /v1/evidence`` answers), an evidence record (JSON or CBOR), or a
    host+guest collection of type ``PAIR_COLLECTION_TYPE``. Raises ``CmwFormatError``."""
    data = _size(data)
    form = "cmw+json" if is_json(data) else "cmw+cbor"
    if form == "cmw+json":
        item = _json(data)
        if isinstance(item, dict) and CTYPE_KEY not in item:
            return SavedEvidence({"node": data}, "json")
        c = _from_json(item, 0)
    else:
        c = _from_cbor(_cbor(data), 0)
    if isinstance(c, Record):
        return SavedEvidence({"node": _evidence_bytes(c, "the CMW")}, form)
    if c.ctype != PAIR_COLLECTION_TYPE or set(c.items) != {HOST, GUEST}:
        raise CmwFormatError(
            f"the CMW collection is not attest's host+guest pair (type {PAIR_COLLECTION_TYPE}, "
            f"members {HOST} and {GUEST})"
        )
    return SavedEvidence(
        {name: _evidence_bytes(c.items[name], f"the {name} member") for name in (HOST, GUEST)},
        form,
    )


def evidence_document(data: bytes) -> dict[str, Any]:
    """The JSON object of one evidence document's bytes (``attest.evidence.parse_evidence``
    checks its members), or ``CmwFormatError``; at most ``MAX_EVIDENCE_BYTES``, as live."""
    if len(data) > MAX_EVIDENCE_BYTES:
        raise CmwFormatError(f"the evidence document is over {MAX_EVIDENCE_BYTES} bytes")
    doc = _json(data)
    if not isinstance(doc, dict):
        raise CmwFormatError("the evidence document is not a JSON object")
    return doc


# --- HTTP content negotiation (``POST /v1/evidence``) -------------------------------------------

_ACCEPT_ITEM = re.compile(r"\s*([^\s;,]+)\s*((?:;[^,]*)?)")
_Q = re.compile(r";\s*q\s*=\s*([01](?:\.[0-9]{0,3})?)\s*(?:;|$)")


def negotiate(accept: str | None) -> str | None:
    """The CMW media type an HTTP ``Accept`` header asks for by name (``CMW_JSON`` or
    ``CMW_CBOR``; of these and ``application/json``, the higher ``q`` first, then the first
    named), or None: the plain evidence document (``application/json``) -- also for ``*/*``,
    no header or anything unparsable, so existing clients are served as before."""
    if not accept or len(accept) > 1024:
        return None
    best: tuple[float, int, str] | None = None
    for pos, part in enumerate(accept.split(",")[:32]):
        m = _ACCEPT_ITEM.match(part)
        if m is None:
            continue
        name = m.group(1).lower()
        if name not in (CMW_JSON, CMW_CBOR, "application/json"):
            continue
        q_match = _Q.search(m.group(2))
        q = float(q_match.group(1)) if q_match else 1.0
        if q <= 0:
            continue
        if best is None or (q, -pos) > (best[0], best[1]):
            best = (q, -pos, name)
    return None if best is None or best[2] == "application/json" else best[2]
