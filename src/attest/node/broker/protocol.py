"""The broker protocol: typed requests and responses between ``attestd`` and ``attestd-tpm``.
Pure: bytes in, typed values out.

Framing: each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
Requests are at most ``MAX_REQUEST`` bytes, responses at most ``MAX_RESPONSE``. Byte strings
travel as lower-case hex.

    request   {"op": NAME, "args": {...}}
    response  {"ok": RESULT} | {"error": {"type": CLASS, "message": TEXT, ...fields}}

Unknown ops, unknown or missing members, wrong types, duplicate names, floats, deep nesting and
oversized values are refused. Every malformed input raises ``TransportError`` and nothing else.
Errors travel as the name of their ``attest.errors`` class with their fields (``rc`` of a
``TpmError``, ``invalid_pcrs`` of a ``ReplayError``, ...), and the client raises the same class.

The upgrade gate's operations (docs/upgrade.md, "Where the gate runs"): ``upgrade_stage``
names an upload the API spooled in the broker's spool directory (``upload_path``; the image
never travels in a frame) and carries the snapshot inline (at most ``MAX_STAGE_SNAPSHOT``
bytes, so that the request fits a frame); a hash tree, up to 256 MiB, is spooled too
(``hash_tree_path``). The broker takes ``now`` from its own clock, never from the request.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from attest import errors as _errors
from attest.audit import parse_entry
from attest.errors import AttestError, AuditChainError, OperationNotAllowed, TransportError
from attest.eventlog.cel import CelRecord, loads_cel
from attest.model import MAX_PCR, HashAlg, PcrSelection, PcrValues
from attest.node.port import NodeIdentity
from attest.node.tpm.port import RawQuote
from attest.runtime import KIND_AUDIT, KIND_VTPM, KINDS
from attest.tpmstruct import parse_public

MAX_REQUEST = 1024 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
HEADER = struct.Struct(">I")
MAX_DEPTH = 16
MAX_MESSAGE_TEXT = 4096

# What the unprivileged API process may ask, and which runtime event kinds it may measure.
OPS = (
    "identity",
    "read_pcrs",
    "quote",
    "activate_credential",
    "measure",
    "runtime_log",
    "audit_record",
    "audit_log",
    "nv_counter_read",
    "nv_counter_define",
    "nv_counter_increment",
    "upgrade_stage",
    "upgrade_refuse_upload",
    "upgrade_status",
    "upgrade_confirm",
    "upgrade_boot",
    "vtpm_create",
    "vtpm_record",
    "vtpm_list",
)
# The API may offer an upload to the gate (which verifies it and records the decision) and read
# the gate's status; it may not move the NV counter, confirm an upgrade or select a boot slot.
OPERATOR_ONLY_OPS = frozenset(
    {
        "audit_record",
        "nv_counter_define",
        "nv_counter_increment",
        "upgrade_confirm",
        "upgrade_boot",
        # the host's guest vTPMs (attest.node.tpm.vtpm): create, vouch, list
        "vtpm_create",
        "vtpm_record",
        "vtpm_list",
    }
)
UNPRIVILEGED_OPS = frozenset(OPS) - OPERATOR_ONLY_OPS
OPERATOR_OPS = frozenset(OPS)
DEFAULT_MEASURE_KINDS = frozenset({"tls-key", "verity-device", "config", "daemon-start"})
# Audit anchors are written only by the audit log itself, never on request; vTPM vouchings only
# by vtpm_create / vtpm_record, which check the created set.
OPERATOR_MEASURE_KINDS = KINDS - {KIND_AUDIT, KIND_VTPM}


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


def _depth_ok(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TransportError(f"nesting deeper than {MAX_DEPTH}")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


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
    _depth_ok(value)
    return value


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- field readers ---------------------------------------------------------------------------


def _obj(
    doc: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TransportError(f"{what} must be an object")
    missing = [k for k in required if k not in doc]
    extra = set(doc) - set(required) - set(optional)
    if missing:
        raise TransportError(f"{what}: missing {', '.join(missing)}")
    if extra:
        raise TransportError(f"{what}: unknown member(s) {', '.join(sorted(extra))[:100]}")
    return doc


def _uint(v: Any, what: str, *, bits: int = 53) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**bits:
        raise TransportError(f"{what} must be an integer in 0..2**{bits}-1")
    return v


_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")


def _hex(v: Any, what: str, *, limit: int) -> bytes:
    if not isinstance(v, str) or len(v) > 2 * limit or not _HEX.match(v):
        raise TransportError(f"{what} must be lower-case hex of at most {limit} bytes")
    return bytes.fromhex(v)


def _str(v: Any, what: str, *, limit: int) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise TransportError(f"{what} must be a string of at most {limit} characters")
    return v


def _alg(name: Any) -> HashAlg:
    if not isinstance(name, str) or len(name) > 16:
        raise TransportError("bank name must be a short string")
    try:
        return HashAlg.from_name(name)
    except ValueError:
        raise TransportError(f"unknown PCR bank {name!r}") from None


def selection_to_json(sel: PcrSelection) -> dict[str, list[int]]:
    return {alg.bank_name: list(idx) for alg, idx in sel.banks}


def selection_from_json(doc: Any) -> PcrSelection:
    if not isinstance(doc, dict) or not 0 < len(doc) <= len(HashAlg):
        raise TransportError("selection must be an object of banks")
    sel: dict[HashAlg, list[int]] = {}
    for bank, idx in doc.items():
        alg = _alg(bank)
        if alg in sel:
            raise TransportError(f"bank {alg.bank_name} selected twice")
        if not isinstance(idx, list) or not 0 < len(idx) <= MAX_PCR:
            raise TransportError("selection indices must be a non-empty list")
        sel[alg] = [_uint(i, "PCR index", bits=5) for i in idx]
        if any(i >= MAX_PCR for i in sel[alg]):
            raise TransportError(f"PCR index out of range 0..{MAX_PCR - 1}")
    return PcrSelection.of(sel)


def pcrs_from_json(doc: Any) -> PcrValues:
    if not isinstance(doc, dict) or len(doc) > len(HashAlg):
        raise TransportError("PCR values must be an object of banks")
    out: dict[HashAlg, dict[int, bytes]] = {}
    for bank, values in doc.items():
        alg = _alg(bank)
        if alg in out or not isinstance(values, dict) or len(values) > MAX_PCR:
            raise TransportError("bad PCR bank in values")
        bank_out: dict[int, bytes] = {}
        for i, d in values.items():
            if not isinstance(i, str) or not i.isdigit() or len(i) > 2 or int(i) >= MAX_PCR:
                raise TransportError("PCR index out of range")
            v = _hex(d, "PCR value", limit=alg.digest_size)
            if len(v) != alg.digest_size:
                raise TransportError(f"{alg.bank_name}:{i} has the wrong size")
            bank_out[int(i)] = v
        out[alg] = bank_out
    return PcrValues(out)


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    op: ClassVar[str] = "identity"


@dataclass(frozen=True, slots=True)
class ReadPcrs:
    selection: PcrSelection
    op: ClassVar[str] = "read_pcrs"


@dataclass(frozen=True, slots=True)
class Quote:
    selection: PcrSelection
    qualifying_data: bytes
    op: ClassVar[str] = "quote"


@dataclass(frozen=True, slots=True)
class ActivateCredential:
    id_object: bytes
    encrypted_secret: bytes
    op: ClassVar[str] = "activate_credential"


@dataclass(frozen=True, slots=True)
class Measure:
    kind: str
    content: Mapping[str, Any]
    op: ClassVar[str] = "measure"


@dataclass(frozen=True, slots=True)
class RuntimeLogRead:
    start: int = 0
    op: ClassVar[str] = "runtime_log"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event: Mapping[str, Any]
    op: ClassVar[str] = "audit_record"


@dataclass(frozen=True, slots=True)
class AuditLogRead:
    start: int = 0
    op: ClassVar[str] = "audit_log"


@dataclass(frozen=True, slots=True)
class NvCounterRead:
    index: int
    op: ClassVar[str] = "nv_counter_read"


@dataclass(frozen=True, slots=True)
class NvCounterDefine:
    index: int
    op: ClassVar[str] = "nv_counter_define"


@dataclass(frozen=True, slots=True)
class NvCounterIncrement:
    index: int
    op: ClassVar[str] = "nv_counter_increment"


@dataclass(frozen=True, slots=True)
class UpgradeStage:
    """Offer the spooled upload at ``upload_path`` to the broker's gate
    (``attest.node.upgrade.stager.Offer``
    without the image bytes)."""

    upload_path: str
    snapshot: bytes
    actor: str
    roots: tuple[bytes, ...] = ()
    hash_tree_path: str | None = None
    version: str | None = None
    op: ClassVar[str] = "upgrade_stage"


@dataclass(frozen=True, slots=True)
class UpgradeRefuseUpload:
    """Record the refusal of an upload over the API's size limit (``upload-too-large``)."""

    limit: int
    actor: str
    op: ClassVar[str] = "upgrade_refuse_upload"


@dataclass(frozen=True, slots=True)
class UpgradeStatus:
    op: ClassVar[str] = "upgrade_status"


@dataclass(frozen=True, slots=True)
class UpgradeConfirm:
    actor: str
    op: ClassVar[str] = "upgrade_confirm"


@dataclass(frozen=True, slots=True)
class UpgradeBoot:
    op: ClassVar[str] = "upgrade_boot"


@dataclass(frozen=True, slots=True)
class VtpmCreate:
    """Manufacture a vTPM for ``guest_id`` and vouch for it (``attest.node.tpm.vtpm``)."""

    guest_id: str
    op: ClassVar[str] = "vtpm_create"


@dataclass(frozen=True, slots=True)
class VtpmRecord:
    """Vouch for the vTPM whose EK public area is ``ek_public`` as ``guest_id``'s."""

    guest_id: str
    ek_public: bytes
    op: ClassVar[str] = "vtpm_record"


@dataclass(frozen=True, slots=True)
class VtpmList:
    op: ClassVar[str] = "vtpm_list"


Request = (
    Identity
    | ReadPcrs
    | Quote
    | ActivateCredential
    | Measure
    | RuntimeLogRead
    | AuditRecord
    | AuditLogRead
    | NvCounterRead
    | NvCounterDefine
    | NvCounterIncrement
    | UpgradeStage
    | UpgradeRefuseUpload
    | UpgradeStatus
    | UpgradeConfirm
    | UpgradeBoot
    | VtpmCreate
    | VtpmRecord
    | VtpmList
)
_NV_REQUESTS: Mapping[str, Callable[[int], Request]] = {
    "nv_counter_read": NvCounterRead,
    "nv_counter_define": NvCounterDefine,
    "nv_counter_increment": NvCounterIncrement,
}

MAX_QUALIFYING_DATA = 64  # TPM2B_DATA
MAX_PATH = 4096
MAX_ACTOR = 64
MAX_VERSION = 128
MAX_ROOTS = 8
# The snapshot travels inline as hex: it must leave room in a MAX_REQUEST frame.
MAX_STAGE_SNAPSHOT = MAX_REQUEST // 2 - 8 * 1024
MAX_CREDENTIAL_BLOB = 1024  # TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET contents
NV_INDEX_FIRST, NV_INDEX_LAST = 0x01000000, 0x01FFFFFF  # TPM_HT_NV_INDEX (Part 2 §7.2)


def encode_request(req: Request) -> bytes:
    args: dict[str, Any]
    if isinstance(req, Identity):
        args = {}
    elif isinstance(req, ReadPcrs):
        args = {"selection": selection_to_json(req.selection)}
    elif isinstance(req, Quote):
        args = {
            "selection": selection_to_json(req.selection),
            "qualifying_data": req.qualifying_data.hex(),
        }
    elif isinstance(req, ActivateCredential):
        args = {"id_object": req.id_object.hex(), "encrypted_secret": req.encrypted_secret.hex()}
    elif isinstance(req, Measure):
        args = {"kind": req.kind, "content": dict(req.content)}
    elif isinstance(req, RuntimeLogRead | AuditLogRead):
        args = {"start": req.start}
    elif isinstance(req, AuditRecord):
        args = {"event": dict(req.event)}
    elif isinstance(req, UpgradeStage):
        args = {"upload_path": req.upload_path, "snapshot": req.snapshot.hex(), "actor": req.actor}
        if req.roots:
            args["roots"] = [r.hex() for r in req.roots]
        if req.hash_tree_path is not None:
            args["hash_tree_path"] = req.hash_tree_path
        if req.version is not None:
            args["version"] = req.version
    elif isinstance(req, UpgradeRefuseUpload):
        args = {"limit": req.limit, "actor": req.actor}
    elif isinstance(req, UpgradeConfirm):
        args = {"actor": req.actor}
    elif isinstance(req, UpgradeStatus | UpgradeBoot | VtpmList):
        args = {}
    elif isinstance(req, VtpmCreate):
        args = {"guest_id": req.guest_id}
    elif isinstance(req, VtpmRecord):
        args = {"guest_id": req.guest_id, "ek_public": req.ek_public.hex()}
    else:
        args = {"index": req.index}
    return dumps({"op": req.op, "args": args})


def _path(v: Any, what: str) -> str:
    s = _str(v, what, limit=MAX_PATH)
    if not s.startswith("/") or "\0" in s:
        raise TransportError(f"{what} must be an absolute path")
    return s


def _actor(v: Any) -> str:
    s = _str(v, "actor", limit=MAX_ACTOR)
    if not s or not s.isprintable():
        raise TransportError("actor must be a non-empty printable string")
    return s


def _decode_upgrade(op: str, a: Any) -> Request:
    if op == "upgrade_stage":
        _obj(a, op, ("upload_path", "snapshot", "actor"), ("roots", "hash_tree_path", "version"))
        roots = a.get("roots", [])
        if not isinstance(roots, list) or len(roots) > MAX_ROOTS:
            raise TransportError(f"roots must be a list of at most {MAX_ROOTS}")
        tree = a.get("hash_tree_path")
        version = a.get("version")
        return UpgradeStage(
            _path(a["upload_path"], "upload_path"),
            _hex(a["snapshot"], "snapshot", limit=MAX_STAGE_SNAPSHOT),
            _actor(a["actor"]),
            roots=tuple(_hex(r, "root", limit=MAX_STAGE_SNAPSHOT) for r in roots),
            hash_tree_path=None if tree is None else _path(tree, "hash_tree_path"),
            version=None if version is None else _str(version, "version", limit=MAX_VERSION),
        )
    if op == "upgrade_refuse_upload":
        _obj(a, op, ("limit", "actor"))
        return UpgradeRefuseUpload(_uint(a["limit"], "limit"), _actor(a["actor"]))
    if op == "upgrade_confirm":
        return UpgradeConfirm(_actor(_obj(a, op, ("actor",))["actor"]))
    _obj(a, op, ())
    return UpgradeStatus() if op == "upgrade_status" else UpgradeBoot()


def decode_request(body: bytes) -> Request:
    """A request from untrusted bytes (the frame's body); ``TransportError`` otherwise."""
    doc = _obj(loads(body, limit=MAX_REQUEST), "request", ("op", "args"))
    op = doc["op"]
    if not isinstance(op, str) or op not in OPS:
        raise TransportError(f"unknown operation {str(op)[:40]!r}")
    a = doc["args"]
    if op == "identity":
        _obj(a, op, ())
        return Identity()
    if op == "read_pcrs":
        return ReadPcrs(selection_from_json(_obj(a, op, ("selection",))["selection"]))
    if op == "quote":
        _obj(a, op, ("selection", "qualifying_data"))
        return Quote(
            selection_from_json(a["selection"]),
            _hex(a["qualifying_data"], "qualifying_data", limit=MAX_QUALIFYING_DATA),
        )
    if op == "activate_credential":
        _obj(a, op, ("id_object", "encrypted_secret"))
        return ActivateCredential(
            _hex(a["id_object"], "id_object", limit=MAX_CREDENTIAL_BLOB),
            _hex(a["encrypted_secret"], "encrypted_secret", limit=MAX_CREDENTIAL_BLOB),
        )
    if op == "measure":
        _obj(a, op, ("kind", "content"))
        kind = _str(a["kind"], "kind", limit=64)
        if kind not in KINDS:
            raise TransportError(f"unknown runtime event kind {kind!r}")
        if not isinstance(a["content"], dict):
            raise TransportError("content must be an object")
        return Measure(kind, a["content"])
    if op in ("runtime_log", "audit_log"):
        start = _uint(_obj(a, op, (), ("start",)).get("start", 0), "start")
        return RuntimeLogRead(start) if op == "runtime_log" else AuditLogRead(start)
    if op == "audit_record":
        event = _obj(a, op, ("event",))["event"]
        if not isinstance(event, dict) or len(event) > 16:
            raise TransportError("event must be an object of at most 16 members")
        return AuditRecord(event)
    if op.startswith("upgrade_"):
        return _decode_upgrade(op, a)
    if op == "vtpm_create":
        return VtpmCreate(_str(_obj(a, op, ("guest_id",))["guest_id"], "guest_id", limit=64))
    if op == "vtpm_record":
        _obj(a, op, ("guest_id", "ek_public"))
        return VtpmRecord(
            _str(a["guest_id"], "guest_id", limit=64), _hex(a["ek_public"], "ek_public", limit=2048)
        )
    if op == "vtpm_list":
        _obj(a, op, ())
        return VtpmList()
    index = _uint(_obj(a, op, ("index",))["index"], "index", bits=32)
    if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
        raise TransportError(f"NV index 0x{index:08x} is not in the NV index range")
    return _NV_REQUESTS[op](index)


# --- results ---------------------------------------------------------------------------------


def identity_to_json(ident: NodeIdentity) -> dict[str, Any]:
    return {
        "ak": ident.ak.tpm2b().hex(),
        "ek": ident.ek.tpm2b().hex() if ident.ek is not None else None,
        "ek_certificates": {f"0x{i:08x}": c.hex() for i, c in ident.ek_certificates.items()},
        "banks": [b.bank_name for b in ident.banks],
    }


def _public(v: Any, what: str) -> Any:
    raw = _hex(v, what, limit=2048)
    try:
        return parse_public(raw, sized=True)
    except AttestError as exc:
        raise TransportError(f"{what}: {exc}") from None


def identity_from_json(doc: Any) -> NodeIdentity:
    d = _obj(doc, "identity", ("ak", "ek", "ek_certificates", "banks"))
    certs = d["ek_certificates"]
    if not isinstance(certs, dict) or len(certs) > 16:
        raise TransportError("ek_certificates must be an object")
    parsed: dict[int, bytes] = {}
    for k, v in certs.items():
        if not re.fullmatch(r"0x[0-9a-f]{8}", k):
            raise TransportError("bad EK certificate index")
        parsed[int(k, 16)] = _hex(v, "EK certificate", limit=16384)
    banks = d["banks"]
    if not isinstance(banks, list) or len(banks) > len(HashAlg):
        raise TransportError("banks must be a list")
    return NodeIdentity(
        ak=_public(d["ak"], "ak"),
        ek=None if d["ek"] is None else _public(d["ek"], "ek"),
        ek_certificates=parsed,
        banks=tuple(_alg(b) for b in banks),
    )


def _records(doc: Any) -> tuple[CelRecord, ...]:
    if not isinstance(doc, list):
        raise TransportError("records must be a list")
    try:
        return loads_cel(json.dumps(doc)) if doc else ()
    except AttestError as exc:
        raise TransportError(f"bad runtime log record: {exc}") from None


def _entries(doc: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(doc, list):
        raise TransportError("entries must be a list")
    try:
        return tuple(parse_entry(e).to_json() for e in doc)
    except AttestError as exc:
        raise TransportError(f"bad audit entry: {exc}") from None


def encode_result(req: Request, result: Any) -> bytes:
    doc: Any
    if isinstance(req, Identity):
        doc = identity_to_json(result)
    elif isinstance(req, ReadPcrs):
        doc = result.to_json()
    elif isinstance(req, Quote):
        doc = {
            "attest": result.attest.hex(),
            "signature": result.signature.hex(),
            "pcrs": result.pcrs.to_json(),
        }
    elif isinstance(req, ActivateCredential):
        doc = {"secret": result.hex()}
    elif isinstance(req, Measure):
        doc = result.to_json()
    elif isinstance(req, RuntimeLogRead):
        doc = {"records": [r.to_json() for r in result]}
    elif isinstance(req, AuditRecord):
        doc = dict(result)
    elif isinstance(req, AuditLogRead):
        doc = {"entries": [dict(e) for e in result]}
    elif isinstance(
        req,
        UpgradeStage
        | UpgradeRefuseUpload
        | UpgradeStatus
        | UpgradeConfirm
        | UpgradeBoot
        | VtpmCreate
        | VtpmRecord
        | VtpmList,
    ):
        doc = dict(result)
    else:
        doc = {"value": int(result)}
    return dumps({"ok": doc})


def _decode_ok(req: Request, doc: Any) -> Any:
    if isinstance(req, Identity):
        return identity_from_json(doc)
    if isinstance(req, ReadPcrs):
        return pcrs_from_json(doc)
    if isinstance(req, Quote):
        d = _obj(doc, "quote", ("attest", "signature", "pcrs"))
        return RawQuote(
            _hex(d["attest"], "attest", limit=4096),
            _hex(d["signature"], "signature", limit=4096),
            pcrs_from_json(d["pcrs"]),
        )
    if isinstance(req, ActivateCredential):
        return _hex(_obj(doc, "secret", ("secret",))["secret"], "secret", limit=1024)
    if isinstance(req, Measure):
        records = _records([doc])
        return records[0]
    if isinstance(req, RuntimeLogRead):
        return _records(_obj(doc, "runtime log", ("records",))["records"])
    if isinstance(req, AuditRecord):
        return _entries([doc])[0]
    if isinstance(req, AuditLogRead):
        return _entries(_obj(doc, "audit log", ("entries",))["entries"])
    if isinstance(req, UpgradeStage):
        if not isinstance(doc, dict) or not isinstance(doc.get("accepted"), bool):
            raise TransportError("decision must be an object with a boolean 'accepted'")
        _str(doc.get("reason"), "reason", limit=64)
        return doc
    if isinstance(
        req,
        UpgradeRefuseUpload
        | UpgradeStatus
        | UpgradeConfirm
        | UpgradeBoot
        | VtpmCreate
        | VtpmRecord
        | VtpmList,
    ):
        if not isinstance(doc, dict):
            raise TransportError(f"{req.op} result must be an object")
        return doc
    return _uint(_obj(doc, "counter", ("value",))["value"], "value", bits=64)


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


def _error_from_json(doc: Any) -> AttestError:
    d = _obj(
        doc,
        "error",
        ("type", "message"),
        ("rc", "invalid_pcrs", "key", "reason", "signed", "threshold", "trusted", "got"),
    )
    name = _str(d["type"], "error type", limit=64)
    msg = _str(d["message"], "error message", limit=MAX_MESSAGE_TEXT)
    cls = ERROR_CLASSES.get(name)
    if cls is None:
        return TransportError(f"attestd-tpm: {msg}" if name == INTERNAL else f"{name}: {msg}")
    makers: dict[type[AttestError], Callable[[], AttestError]] = {
        _errors.TpmError: lambda: _errors.TpmError(msg, rc=_uint(d.get("rc", 0), "rc", bits=32)),
        _errors.ReplayError: lambda: _errors.ReplayError(msg, invalid_pcrs=_pairs_list(d)),
        _errors.ConfigError: lambda: _errors.ConfigError(
            msg.removeprefix(f"{d.get('key')}: "), key=_str(d.get("key"), "key", limit=256)
        ),
        _errors.UpgradeRefused: lambda: _errors.UpgradeRefused(
            _str(d.get("reason"), "reason", limit=256), msg
        ),
        _errors.ThresholdError: lambda: _errors.ThresholdError(
            msg,
            signed=_uint(d.get("signed"), "signed"),
            threshold=_uint(d.get("threshold"), "threshold"),
        ),
        _errors.RollbackError: lambda: _errors.RollbackError(
            msg, trusted=_uint(d.get("trusted"), "trusted"), got=_uint(d.get("got"), "got")
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
        out.append((_str(p[0], "bank", limit=16), _uint(p[1], "pcr", bits=5)))
    return out


def decode_response(req: Request, body: bytes) -> Any:
    """The typed result of ``req``, or raise the error the broker reported (as its own class).
    ``TransportError`` when the response is malformed."""
    doc = loads(body, limit=MAX_RESPONSE)
    if not isinstance(doc, dict) or len(doc) != 1:
        raise TransportError("response must be an object with one member: ok or error")
    if "ok" in doc:
        return _decode_ok(req, doc["ok"])
    if "error" in doc:
        raise _error_from_json(doc["error"])
    raise TransportError("response must hold ok or error")
