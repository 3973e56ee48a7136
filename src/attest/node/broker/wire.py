"""How values travel between ``attestd`` and ``attestd-tpm``, whatever the operation. Pure: bytes
in, typed values out. The operations themselves are the table in ``protocol``.

Framing: each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
Requests are at most ``MAX_REQUEST`` bytes, responses at most ``MAX_RESPONSE``. Byte strings
travel as lower-case hex.

    request   {"op": NAME, "args": {...}}
    response  {"ok": RESULT} | {"error": {"type": CLASS, "message": TEXT, ...fields}}

Unknown or missing members, wrong types, duplicate names, floats, deep nesting, lone
surrogates and oversized values are refused. Every malformed input raises ``TransportError``
and nothing else. Errors travel as the name of their ``attest.errors`` class with their fields
(``rc`` of a ``TpmError``, ``invalid_pcrs`` of a ``ReplayError``, ...), and the client raises
the same class.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from attest import errors as _errors
from attest.audit import parse_entry
from attest.errors import AttestError, AuditChainError, OperationNotAllowed, TransportError
from attest.eventlog.cel import CelRecord, loads_cel
from attest.model import MAX_PCR, HashAlg, PcrSelection, PcrValues
from attest.node.port import NodeIdentity, StateFs
from attest.node.tpm.port import RawQuote
from attest.tpmstruct import Public, parse_public

T = TypeVar("T")

MAX_REQUEST = 1024 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
HEADER = struct.Struct(">I")
MAX_DEPTH = 16
MAX_MESSAGE_TEXT = 4096


# --- framing ---------------------------------------------------------------------------------


def encode_frame(body: bytes, *, limit: int) -> bytes:
    if len(body) > limit:
        raise TransportError(f"message of {len(body)} bytes exceeds the limit of {limit}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, *, limit: int) -> int:
    if len(header) != HEADER.size:
        raise TransportError("truncated frame header")
    (n,) = HEADER.unpack(header)
    if n > limit:
        raise TransportError(f"frame of {n} bytes exceeds the limit of {limit}")
    return int(n)


def decode_frame(data: bytes, *, limit: int) -> bytes:
    """The body of one complete frame; the data must hold exactly one."""
    n = frame_length(data[: HEADER.size], limit=limit)
    body = data[HEADER.size :]
    if len(body) != n:
        raise TransportError(f"frame says {n} bytes but holds {len(body)}")
    return body


# --- strict JSON -----------------------------------------------------------------------------


def _no_float(text: str) -> Any:
    raise TransportError("floating-point numbers are not allowed")


def _no_constant(text: str) -> Any:
    raise TransportError(f"{text} is not JSON")


def _int(text: str) -> int:
    if len(text) > 21:
        raise TransportError("integer too large")
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TransportError("duplicate member name")
        out[k] = v
    return out


def _unicode(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise TransportError("string holds a lone surrogate (not Unicode)") from None


def _shape_ok(value: Any) -> None:
    """Not nested deeper than ``MAX_DEPTH``, and every string Unicode: a ``\\ud800`` escape
    is valid JSON but no UTF-8, and an answer that quotes it could not be encoded."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TransportError(f"nesting deeper than {MAX_DEPTH}")
        if isinstance(item, dict):
            for k in item:
                _unicode(k)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            _unicode(item)


def loads(body: bytes, *, limit: int) -> Any:
    if len(body) > limit:
        raise TransportError(f"message of {len(body)} bytes exceeds the limit of {limit}")
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_no_float,
            parse_int=_int,
            parse_constant=_no_constant,
        )
    except TransportError:
        raise
    except (ValueError, RecursionError) as exc:
        raise TransportError(f"message is not JSON: {str(exc)[:100]}") from None
    _shape_ok(value)
    return value


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- field readers ---------------------------------------------------------------------------


def members(
    doc: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``doc`` as an object with exactly the ``required`` members and some ``optional`` ones."""
    if not isinstance(doc, dict):
        raise TransportError(f"{what} must be an object")
    missing = [k for k in required if k not in doc]
    extra = set(doc) - set(required) - set(optional)
    if missing:
        raise TransportError(f"{what}: missing {', '.join(missing)}")
    if extra:
        raise TransportError(f"{what}: unknown member(s) {', '.join(sorted(extra))[:100]}")
    return doc


def uint(v: Any, what: str, *, bits: int = 53) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**bits:
        raise TransportError(f"{what} must be an integer in 0..2**{bits}-1")
    return v


def boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise TransportError(f"{what} must be true or false")
    return v


_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")


def hex_bytes(v: Any, what: str, *, limit: int) -> bytes:
    if not isinstance(v, str) or len(v) > 2 * limit or not _HEX.match(v):
        raise TransportError(f"{what} must be lower-case hex of at most {limit} bytes")
    return bytes.fromhex(v)


def text(v: Any, what: str, *, limit: int) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise TransportError(f"{what} must be a string of at most {limit} characters")
    return v


def optional_text(v: Any, what: str, *, limit: int) -> str | None:
    return None if v is None else text(v, what, limit=limit)


def bank(name: Any) -> HashAlg:
    if not isinstance(name, str) or len(name) > 16:
        raise TransportError("bank name must be a short string")
    try:
        return HashAlg.from_name(name)
    except ValueError:
        raise TransportError(f"unknown PCR bank {name!r}") from None


# --- values of the node ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """A value to JSON and back; ``from_json`` reads untrusted JSON and raises
    ``TransportError`` for anything malformed."""

    to_json: Callable[[T], Any]
    from_json: Callable[[Any], T]


class JsonType(Protocol):
    """A class that is its own codec: ``to_json`` and the classmethod ``from_json``."""

    def to_json(self) -> Any: ...

    @classmethod
    def from_json(cls, doc: Any) -> Self: ...


J = TypeVar("J", bound=JsonType)


def codec(cls: type[J]) -> Codec[J]:
    """The codec of a class that is its own (an operation's arguments, a typed result)."""
    return Codec(cls.to_json, cls.from_json)


def selection_to_json(sel: PcrSelection) -> dict[str, list[int]]:
    return {alg.bank_name: list(idx) for alg, idx in sel.banks}


def selection_from_json(doc: Any) -> PcrSelection:
    if not isinstance(doc, dict) or not 0 < len(doc) <= len(HashAlg):
        raise TransportError("selection must be an object of banks")
    sel: dict[HashAlg, list[int]] = {}
    for name, idx in doc.items():
        alg = bank(name)
        if alg in sel:
            raise TransportError(f"bank {alg.bank_name} selected twice")
        if not isinstance(idx, list) or not 0 < len(idx) <= MAX_PCR:
            raise TransportError("selection indices must be a non-empty list")
        sel[alg] = [uint(i, "PCR index", bits=5) for i in idx]
        if any(i >= MAX_PCR for i in sel[alg]):
            raise TransportError(f"PCR index out of range 0..{MAX_PCR - 1}")
    return PcrSelection.of(sel)


def pcrs_to_json(values: PcrValues) -> dict[str, Any]:
    return values.to_json()


def pcrs_from_json(doc: Any) -> PcrValues:
    if not isinstance(doc, dict) or len(doc) > len(HashAlg):
        raise TransportError("PCR values must be an object of banks")
    out: dict[HashAlg, dict[int, bytes]] = {}
    for name, values in doc.items():
        alg = bank(name)
        if alg in out or not isinstance(values, dict) or len(values) > MAX_PCR:
            raise TransportError("bad PCR bank in values")
        bank_out: dict[int, bytes] = {}
        for i, d in values.items():
            if not isinstance(i, str) or not i.isdigit() or len(i) > 2 or int(i) >= MAX_PCR:
                raise TransportError("PCR index out of range")
            v = hex_bytes(d, "PCR value", limit=alg.digest_size)
            if len(v) != alg.digest_size:
                raise TransportError(f"{alg.bank_name}:{i} has the wrong size")
            bank_out[int(i)] = v
        out[alg] = bank_out
    return PcrValues(out)


def identity_to_json(ident: NodeIdentity) -> dict[str, Any]:
    return {
        "ak": ident.ak.tpm2b().hex(),
        "ek": ident.ek.tpm2b().hex() if ident.ek is not None else None,
        "ek_certificates": {f"0x{i:08x}": c.hex() for i, c in ident.ek_certificates.items()},
        "banks": [b.bank_name for b in ident.banks],
    }


def _public(v: Any, what: str) -> Public:
    raw = hex_bytes(v, what, limit=2048)
    try:
        return parse_public(raw, sized=True)
    except AttestError as exc:
        raise TransportError(f"{what}: {exc}") from None


def identity_from_json(doc: Any) -> NodeIdentity:
    d = members(doc, "identity", ("ak", "ek", "ek_certificates", "banks"))
    certs = d["ek_certificates"]
    if not isinstance(certs, dict) or len(certs) > 16:
        raise TransportError("ek_certificates must be an object")
    parsed: dict[int, bytes] = {}
    for k, v in certs.items():
        if not re.fullmatch(r"0x[0-9a-f]{8}", k):
            raise TransportError("bad EK certificate index")
        parsed[int(k, 16)] = hex_bytes(v, "EK certificate", limit=16384)
    banks = d["banks"]
    if not isinstance(banks, list) or len(banks) > len(HashAlg):
        raise TransportError("banks must be a list")
    return NodeIdentity(
        ak=_public(d["ak"], "ak"),
        ek=None if d["ek"] is None else _public(d["ek"], "ek"),
        ek_certificates=parsed,
        banks=tuple(bank(b) for b in banks),
    )


def quote_to_json(q: RawQuote) -> dict[str, Any]:
    return {"attest": q.attest.hex(), "signature": q.signature.hex(), "pcrs": q.pcrs.to_json()}


def quote_from_json(doc: Any) -> RawQuote:
    d = members(doc, "quote", ("attest", "signature", "pcrs"))
    return RawQuote(
        hex_bytes(d["attest"], "attest", limit=4096),
        hex_bytes(d["signature"], "signature", limit=4096),
        pcrs_from_json(d["pcrs"]),
    )


def record_to_json(rec: CelRecord) -> dict[str, Any]:
    return rec.to_json()


def records_from_json(doc: Any) -> tuple[CelRecord, ...]:
    if not isinstance(doc, list):
        raise TransportError("records must be a list")
    try:
        return loads_cel(json.dumps(doc)) if doc else ()
    except AttestError as exc:
        raise TransportError(f"bad runtime log record: {exc}") from None


def record_from_json(doc: Any) -> CelRecord:
    return records_from_json([doc])[0]


def entries_from_json(doc: Any) -> tuple[Mapping[str, Any], ...]:
    """Audit entries, each checked by ``attest.audit.parse_entry`` and kept in its JSON form
    (the ``NodePort`` contract)."""
    if not isinstance(doc, list):
        raise TransportError("entries must be a list")
    try:
        return tuple(parse_entry(e).to_json() for e in doc)
    except AttestError as exc:
        raise TransportError(f"bad audit entry: {exc}") from None


def entry_from_json(doc: Any) -> Mapping[str, Any]:
    return entries_from_json([doc])[0]


def _secret_from_json(doc: Any) -> bytes:
    return hex_bytes(members(doc, "secret", ("secret",))["secret"], "secret", limit=1024)


def _records_to_json(records: tuple[CelRecord, ...]) -> dict[str, Any]:
    return {"records": [r.to_json() for r in records]}


def _records_from_json(doc: Any) -> tuple[CelRecord, ...]:
    return records_from_json(members(doc, "runtime log", ("records",))["records"])


def _entries_to_json(entries: tuple[Mapping[str, Any], ...]) -> dict[str, Any]:
    return {"entries": [dict(e) for e in entries]}


def _entries_from_json(doc: Any) -> tuple[Mapping[str, Any], ...]:
    return entries_from_json(members(doc, "audit log", ("entries",))["entries"])


def _counter_from_json(doc: Any) -> int:
    return uint(members(doc, "counter", ("value",))["value"], "value", bits=64)


def _state_fs_from_json(doc: Any) -> StateFs:
    d = members(
        doc, "state_fs", ("free_bytes", "total_bytes", "threshold_bytes", "low", "write_failures")
    )
    fs = StateFs(
        uint(d["free_bytes"], "free_bytes", bits=64),
        uint(d["total_bytes"], "total_bytes", bits=64),
        uint(d["threshold_bytes"], "threshold_bytes", bits=64),
        uint(d["write_failures"], "write_failures", bits=64),
    )
    if boolean(d["low"], "low") is not fs.low:
        raise TransportError("state_fs: low does not match free_bytes and threshold_bytes")
    return fs


IDENTITY = Codec(identity_to_json, identity_from_json)
PCRS = Codec(pcrs_to_json, pcrs_from_json)
QUOTE = Codec(quote_to_json, quote_from_json)
SECRET: Codec[bytes] = Codec(lambda s: {"secret": s.hex()}, _secret_from_json)
RECORD = Codec(record_to_json, record_from_json)
RECORDS = Codec(_records_to_json, _records_from_json)  # {"records": [...]}
ENTRY: Codec[Mapping[str, Any]] = Codec(dict, entry_from_json)
ENTRIES = Codec(_entries_to_json, _entries_from_json)  # {"entries": [...]}
COUNTER: Codec[int] = Codec(lambda v: {"value": int(v)}, _counter_from_json)
STATE_FS: Codec[StateFs] = Codec(StateFs.to_json, _state_fs_from_json)


# --- errors ----------------------------------------------------------------------------------

ERROR_CLASSES: Mapping[str, type[AttestError]] = {
    **{
        name: cls
        for name, cls in vars(_errors).items()
        if isinstance(cls, type) and issubclass(cls, AttestError)
    },
    "AuditChainError": AuditChainError,
    "OperationNotAllowed": OperationNotAllowed,
}
INTERNAL = "InternalError"


def encode_error(exc: BaseException) -> bytes:
    """An error response. Only attest errors carry their message; anything else is reported
    as an internal error without details (they stay in the broker's log)."""
    name = type(exc).__name__
    if not isinstance(exc, AttestError) or ERROR_CLASSES.get(name) is not type(exc):
        return dumps({"error": {"type": INTERNAL, "message": "internal error in attestd-tpm"}})
    err: dict[str, Any] = {"type": name, "message": str(exc)[:MAX_MESSAGE_TEXT]}
    if isinstance(exc, _errors.TpmError):
        err["rc"] = exc.rc
    if isinstance(exc, _errors.ReplayError):
        err["invalid_pcrs"] = [list(p) for p in exc.invalid_pcrs]
    if isinstance(exc, _errors.ConfigError):
        err["key"] = exc.key
    if isinstance(exc, _errors.UpgradeRefused):
        err["reason"] = exc.reason
    if isinstance(exc, _errors.ThresholdError):
        err["signed"], err["threshold"] = exc.signed, exc.threshold
    if isinstance(exc, _errors.RollbackError):
        err["trusted"], err["got"] = exc.trusted, exc.got
    return dumps({"error": err})


def error_from_json(doc: Any) -> AttestError:
    d = members(
        doc,
        "error",
        ("type", "message"),
        ("rc", "invalid_pcrs", "key", "reason", "signed", "threshold", "trusted", "got"),
    )
    name = text(d["type"], "error type", limit=64)
    msg = text(d["message"], "error message", limit=MAX_MESSAGE_TEXT)
    cls = ERROR_CLASSES.get(name)
    if cls is None:
        return TransportError(f"attestd-tpm: {msg}" if name == INTERNAL else f"{name}: {msg}")
    makers: dict[type[AttestError], Callable[[], AttestError]] = {
        _errors.TpmError: lambda: _errors.TpmError(msg, rc=uint(d.get("rc", 0), "rc", bits=32)),
        _errors.ReplayError: lambda: _errors.ReplayError(msg, invalid_pcrs=_pairs_list(d)),
        _errors.ConfigError: lambda: _errors.ConfigError(
            msg.removeprefix(f"{d.get('key')}: "), key=text(d.get("key"), "key", limit=256)
        ),
        _errors.UpgradeRefused: lambda: _errors.UpgradeRefused(
            text(d.get("reason"), "reason", limit=256), msg
        ),
        _errors.RegistryRefused: lambda: _errors.RegistryRefused(
            text(d.get("reason"), "reason", limit=256), msg
        ),
        _errors.ThresholdError: lambda: _errors.ThresholdError(
            msg,
            signed=uint(d.get("signed"), "signed"),
            threshold=uint(d.get("threshold"), "threshold"),
        ),
        _errors.RollbackError: lambda: _errors.RollbackError(
            msg, trusted=uint(d.get("trusted"), "trusted"), got=uint(d.get("got"), "got")
        ),
    }
    maker = makers.get(cls)
    return maker() if maker is not None else cls(msg)


def _pairs_list(d: Mapping[str, Any]) -> list[tuple[str, int]]:
    raw = d.get("invalid_pcrs", [])
    if not isinstance(raw, list) or len(raw) > 200:
        raise TransportError("invalid_pcrs must be a list")
    out = []
    for p in raw:
        if not isinstance(p, list) or len(p) != 2:
            raise TransportError("invalid_pcrs entries must be [bank, pcr]")
        out.append((text(p[0], "bank", limit=16), uint(p[1], "pcr", bits=5)))
    return out


def read_response(body: bytes) -> Any:
    """The ``ok`` member of a response, or raise the error the broker reported (as its own
    class). ``TransportError`` when the response is malformed."""
    doc = loads(body, limit=MAX_RESPONSE)
    if not isinstance(doc, dict) or len(doc) != 1:
        raise TransportError("response must be an object with one member: ok or error")
    if "ok" in doc:
        return doc["ok"]
    if "error" in doc:
        raise error_from_json(doc["error"])
    raise TransportError("response must hold ok or error")
