"""The broker protocol as one table: every operation ``attestd`` may ask of ``attestd-tpm``. Pure.

Each operation is one ``Op`` in ``OPS``, and the table is the only place it is described:

- ``name``: what travels as ``"op"`` in the request;
- ``privilege``: ``Privilege.API`` (the API socket and the operator socket) or
  ``Privilege.OPERATOR`` (the operator socket only);
- ``idempotent``: whether the client may resend it when the connection drops after sending
  (``measure``, ``audit_record``, the NV counter's define and increment, and the gate and vTPM
  operations that record or write are not: an event is never recorded twice by a retry);
- ``args`` and ``result``: the codecs of its arguments and of its typed result;
- ``serve``: what the broker runs for it, against ``attest.node.broker.services.Services``.

Everything else reads the table: the per-socket allow-lists (``UNPRIVILEGED_OPS``,
``OPERATOR_OPS``), the server's dispatch (``read_request``, ``decode_args``, ``Op.serve``,
``encode_result``), the client's retry rule and its typed calls
(``BrokerClient.call(OPS.quote, Quote(selection, nonce))``, which mypy types from the entry).
Adding an operation is one entry here and the method its ``serve`` calls; a typed
``BrokerClient`` method is needed only where ``attest.node.port.NodePort`` asks for one.
How requests, results and errors are framed and encoded: ``attest.node.broker.wire``.

The upgrade gate's operations (docs/upgrade.md, "Where the gate runs"): ``upgrade_stage``
names an upload the API spooled in the broker's spool directory (``upload_path``; the image
never travels in a frame) and carries the snapshot inline (at most ``MAX_STAGE_SNAPSHOT``
bytes, so that the request fits a frame); a hash tree, up to 256 MiB, is spooled too
(``hash_tree_path``). The broker takes ``now`` from its own clock, never from the request.

The host facts (``attest.node.broker.host``): ``firmware_log``, ``kernel_cmdline`` and
``verity_report`` read what attestd cannot (the firmware log in securityfs, dm-verity tables
through ``/dev/mapper/control``). They are read-only, and no argument names a file: the
broker reads the paths of its own command line. ``firmware_log`` serves the log in chunks
(``offset``, ``max_bytes``; the broker caps ``max_bytes`` at ``FIRMWARE_LOG_CHUNK``).
``snp_report`` asks the guest's AMD-SP for an SEV-SNP report binding the 64 bytes given, through
the interface of the broker's ``--snp-guest`` (``attest.node.snp_guest``; None when off).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from attest.errors import TransportError
from attest.model import PcrSelection
from attest.node.broker.results import (
    CMDLINE,
    FIRMWARE_CHUNK,
    REGISTRY_REFRESH,
    SNP_REPORT,
    VERITY_REPORT,
    BootChoice,
    Confirmed,
    GateStatus,
    StagedUpgrade,
    VtpmVouched,
    vtpms_from_json,
    vtpms_to_json,
)
from attest.node.broker.wire import (
    COUNTER,
    ENTRIES,
    ENTRY,
    IDENTITY,
    MAX_REQUEST,
    PCRS,
    QUOTE,
    RECORD,
    RECORDS,
    SECRET,
    STATE_FS,
    Codec,
    codec,
    dumps,
    hex_bytes,
    loads,
    members,
    read_response,
    selection_from_json,
    selection_to_json,
    text,
    uint,
)
from attest.node.port import FIRMWARE_LOG_CHUNK, SNP_REPORT_DATA
from attest.runtime import AUDIT_KINDS, KIND_SNP_HOST, KIND_VTPM, KINDS

if TYPE_CHECKING:
    # For typing the ``serve`` functions only: at run time the table does not import the
    # broker's side (``LocalNode``, ``BrokerUpgrades``), which imports the table.
    from attest.node.broker.services import Services

A = TypeVar("A")
R = TypeVar("R")

# What attestd records itself. Not ``verity-device``: the broker's own watcher records those
# (attest.node.broker.host), and a verity root hash names the release the verifier appraises,
# so the network-facing process must not be able to claim one.
DEFAULT_MEASURE_KINDS = frozenset({"tls-key", "config", "daemon-start"})
# Audit anchors are written only by the audit log itself, never on request; vTPM vouchings only
# by vtpm_create / vtpm_record, which check the created set; the host's SEV-SNP chip id only by
# attestd-tpm itself at start (--snp-host reads it from the AMD-SP).
OPERATOR_MEASURE_KINDS = KINDS - AUDIT_KINDS - {KIND_VTPM, KIND_SNP_HOST}
MAX_QUALIFYING_DATA = 64  # TPM2B_DATA
MAX_CREDENTIAL_BLOB = 1024  # TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET contents
NV_INDEX_FIRST, NV_INDEX_LAST = 0x01000000, 0x01FFFFFF  # TPM_HT_NV_INDEX (Part 2 §7.2)
MAX_PATH = 4096
MAX_ACTOR = 64
MAX_VERSION = 128
MAX_ROOTS = 8
MAX_DETAIL = 512  # a registry push refusal's message, written by the API
MAX_GUEST_ID = 64
MAX_EK_PUBLIC = 2048
# The snapshot travels inline as hex: it must leave room in a MAX_REQUEST frame.
MAX_STAGE_SNAPSHOT = MAX_REQUEST // 2 - 8 * 1024


# --- the shape of an entry -------------------------------------------------------------------


class Privilege(enum.Enum):
    API = "api"  # the API socket (unprivileged attestd) and the operator socket
    OPERATOR = "operator"  # the operator socket (root) only


@dataclass(frozen=True, slots=True, eq=False)
class Op(Generic[A, R]):
    """One operation of the broker (module docstring). Compared by identity."""

    name: str
    privilege: Privilege
    idempotent: bool
    args: Codec[A]
    result: Codec[R]
    serve: Callable[[Services, A], R]
    redact: bool = False  # its refusals may name people in clear: the broker logs no detail


@dataclass(frozen=True, slots=True)
class Request(Generic[A, R]):
    op: Op[A, R]
    args: A


# --- arguments -------------------------------------------------------------------------------


def _path(v: Any, what: str) -> str:
    s = text(v, what, limit=MAX_PATH)
    if not s.startswith("/") or "\0" in s:
        raise TransportError(f"{what} must be an absolute path")
    return s


def _actor(v: Any) -> str:
    s = text(v, "actor", limit=MAX_ACTOR)
    if not s or not s.isprintable():
        raise TransportError("actor must be a non-empty printable string")
    return s


def _no_args(doc: Any) -> None:
    members(doc, "args", ())


NO_ARGS: Codec[None] = Codec(lambda _: {}, _no_args)


@dataclass(frozen=True, slots=True)
class ReadPcrs:
    selection: PcrSelection

    def to_json(self) -> dict[str, Any]:
        return {"selection": selection_to_json(self.selection)}

    @classmethod
    def from_json(cls, doc: Any) -> ReadPcrs:
        return cls(selection_from_json(members(doc, "args", ("selection",))["selection"]))


@dataclass(frozen=True, slots=True)
class Quote:
    selection: PcrSelection
    qualifying_data: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "selection": selection_to_json(self.selection),
            "qualifying_data": self.qualifying_data.hex(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Quote:
        d = members(doc, "args", ("selection", "qualifying_data"))
        return cls(
            selection_from_json(d["selection"]),
            hex_bytes(d["qualifying_data"], "qualifying_data", limit=MAX_QUALIFYING_DATA),
        )


@dataclass(frozen=True, slots=True)
class ActivateCredential:
    id_object: bytes
    encrypted_secret: bytes

    def to_json(self) -> dict[str, Any]:
        return {"id_object": self.id_object.hex(), "encrypted_secret": self.encrypted_secret.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> ActivateCredential:
        d = members(doc, "args", ("id_object", "encrypted_secret"))
        return cls(
            hex_bytes(d["id_object"], "id_object", limit=MAX_CREDENTIAL_BLOB),
            hex_bytes(d["encrypted_secret"], "encrypted_secret", limit=MAX_CREDENTIAL_BLOB),
        )


@dataclass(frozen=True, slots=True)
class Measure:
    kind: str
    content: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "content": dict(self.content)}

    @classmethod
    def from_json(cls, doc: Any) -> Measure:
        d = members(doc, "args", ("kind", "content"))
        kind = text(d["kind"], "kind", limit=64)
        if kind not in KINDS:
            raise TransportError(f"unknown runtime event kind {kind!r}")
        if not isinstance(d["content"], dict):
            raise TransportError("content must be an object")
        return cls(kind, d["content"])


@dataclass(frozen=True, slots=True)
class LogRead:
    """The records (runtime log) or entries (audit log) from ``start`` on."""

    start: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start}

    @classmethod
    def from_json(cls, doc: Any) -> LogRead:
        return cls(uint(members(doc, "args", (), ("start",)).get("start", 0), "start"))


@dataclass(frozen=True, slots=True)
class FirmwareLogRead:
    """Up to ``max_bytes`` of the firmware event log from byte ``offset`` on. Which log is
    the broker's configuration (``--firmware-log``): the request has no path."""

    offset: int = 0
    max_bytes: int = FIRMWARE_LOG_CHUNK

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "max_bytes": self.max_bytes}

    @classmethod
    def from_json(cls, doc: Any) -> FirmwareLogRead:
        d = members(doc, "args", ("offset", "max_bytes"))
        return cls(uint(d["offset"], "offset"), uint(d["max_bytes"], "max_bytes"))


@dataclass(frozen=True, slots=True)
class SnpReportRequest:
    """An SEV-SNP report binding ``report_data`` (64 bytes). Which interface and VMPL is the
    broker's configuration (``--snp-guest``): the request names neither."""

    report_data: bytes

    def to_json(self) -> dict[str, Any]:
        return {"report_data": self.report_data.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> SnpReportRequest:
        d = members(doc, "args", ("report_data",))
        data = hex_bytes(d["report_data"], "report_data", limit=SNP_REPORT_DATA)
        if len(data) != SNP_REPORT_DATA:
            raise TransportError(f"report_data must be {SNP_REPORT_DATA} bytes")
        return cls(data)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"event": dict(self.event)}

    @classmethod
    def from_json(cls, doc: Any) -> AuditRecord:
        event = members(doc, "args", ("event",))["event"]
        if not isinstance(event, dict) or len(event) > 16:
            raise TransportError("event must be an object of at most 16 members")
        return cls(event)


@dataclass(frozen=True, slots=True)
class NvIndex:
    index: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index}

    @classmethod
    def from_json(cls, doc: Any) -> NvIndex:
        index = uint(members(doc, "args", ("index",))["index"], "index", bits=32)
        if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
            raise TransportError(f"NV index 0x{index:08x} is not in the NV index range")
        return cls(index)


@dataclass(frozen=True, slots=True)
class UpgradeStage:
    """Offer the spooled upload at ``upload_path`` to the broker's gate
    (``attest.node.upgrade.stager.Offer`` without the image bytes)."""

    upload_path: str
    snapshot: bytes
    actor: str
    roots: tuple[bytes, ...] = ()
    hash_tree_path: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "upload_path": self.upload_path,
            "snapshot": self.snapshot.hex(),
            "actor": self.actor,
        }
        if self.roots:
            doc["roots"] = [r.hex() for r in self.roots]
        if self.hash_tree_path is not None:
            doc["hash_tree_path"] = self.hash_tree_path
        if self.version is not None:
            doc["version"] = self.version
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> UpgradeStage:
        optional = ("roots", "hash_tree_path", "version")
        d = members(doc, "args", ("upload_path", "snapshot", "actor"), optional)
        roots = d.get("roots", [])
        if not isinstance(roots, list) or len(roots) > MAX_ROOTS:
            raise TransportError(f"roots must be a list of at most {MAX_ROOTS}")
        tree, version = d.get("hash_tree_path"), d.get("version")
        return cls(
            _path(d["upload_path"], "upload_path"),
            hex_bytes(d["snapshot"], "snapshot", limit=MAX_STAGE_SNAPSHOT),
            _actor(d["actor"]),
            roots=tuple(hex_bytes(r, "root", limit=MAX_STAGE_SNAPSHOT) for r in roots),
            hash_tree_path=None if tree is None else _path(tree, "hash_tree_path"),
            version=None if version is None else text(version, "version", limit=MAX_VERSION),
        )


# What the API may have the gate record as a registry push it refused before the trust refresh.
REGISTRY_API_REFUSALS = frozenset({"upload-too-large", "upload-timeout", "snapshot-malformed"})


@dataclass(frozen=True, slots=True)
class RegistryPush:
    """Push a registry snapshot (and newer roots) to the broker's gate without an image
    (``UpgradeGate.refresh_registry``). With ``refused`` (one of ``REGISTRY_API_REFUSALS``) the
    API reports a push it refused before the trust refresh (``snapshot`` is then empty and
    ``detail`` its message): the gate records that refusal and answers it."""

    snapshot: bytes
    actor: str
    roots: tuple[bytes, ...] = ()
    refused: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"snapshot": self.snapshot.hex(), "actor": self.actor}
        if self.roots:
            doc["roots"] = [r.hex() for r in self.roots]
        if self.refused is not None:
            doc["refused"] = self.refused
            doc["detail"] = self.detail
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> RegistryPush:
        d = members(doc, "args", ("snapshot", "actor"), ("roots", "refused", "detail"))
        roots = d.get("roots", [])
        if not isinstance(roots, list) or len(roots) > MAX_ROOTS:
            raise TransportError(f"roots must be a list of at most {MAX_ROOTS}")
        refused = d.get("refused")
        if refused is not None and refused not in REGISTRY_API_REFUSALS:
            raise TransportError(f"refused must be one of {sorted(REGISTRY_API_REFUSALS)}")
        return cls(
            hex_bytes(d["snapshot"], "snapshot", limit=MAX_STAGE_SNAPSHOT),
            _actor(d["actor"]),
            roots=tuple(hex_bytes(r, "root", limit=MAX_STAGE_SNAPSHOT) for r in roots),
            refused=refused,
            detail=text(d.get("detail", ""), "detail", limit=MAX_DETAIL),
        )


@dataclass(frozen=True, slots=True)
class UpgradeRefuseUpload:
    """Record the refusal of an upload over the API's size limit (``upload-too-large``)."""

    limit: int
    actor: str

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "actor": self.actor}

    @classmethod
    def from_json(cls, doc: Any) -> UpgradeRefuseUpload:
        d = members(doc, "args", ("limit", "actor"))
        return cls(uint(d["limit"], "limit"), _actor(d["actor"]))


@dataclass(frozen=True, slots=True)
class UpgradeConfirm:
    actor: str

    def to_json(self) -> dict[str, Any]:
        return {"actor": self.actor}

    @classmethod
    def from_json(cls, doc: Any) -> UpgradeConfirm:
        return cls(_actor(members(doc, "args", ("actor",))["actor"]))


@dataclass(frozen=True, slots=True)
class VtpmCreate:
    """Manufacture a vTPM for ``guest_id`` and vouch for it (``attest.node.tpm.vtpm``)."""

    guest_id: str

    def to_json(self) -> dict[str, Any]:
        return {"guest_id": self.guest_id}

    @classmethod
    def from_json(cls, doc: Any) -> VtpmCreate:
        d = members(doc, "args", ("guest_id",))
        return cls(text(d["guest_id"], "guest_id", limit=MAX_GUEST_ID))


@dataclass(frozen=True, slots=True)
class VtpmRecord:
    """Vouch for the vTPM whose EK public area is ``ek_public`` as ``guest_id``'s."""

    guest_id: str
    ek_public: bytes

    def to_json(self) -> dict[str, Any]:
        return {"guest_id": self.guest_id, "ek_public": self.ek_public.hex()}

    @classmethod
    def from_json(cls, doc: Any) -> VtpmRecord:
        d = members(doc, "args", ("guest_id", "ek_public"))
        return cls(
            text(d["guest_id"], "guest_id", limit=MAX_GUEST_ID),
            hex_bytes(d["ek_public"], "ek_public", limit=MAX_EK_PUBLIC),
        )


# --- results ---------------------------------------------------------------------------------


def _refusal_from_json(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise TransportError("upgrade_refuse_upload result must be an object")


REFUSAL: Codec[None] = Codec(lambda _: {}, _refusal_from_json)  # it always answers an error


# --- the table -------------------------------------------------------------------------------


class OPS:
    """The broker's operations (module docstring)."""

    identity = Op(
        "identity",
        Privilege.API,
        idempotent=True,
        args=NO_ARGS,
        result=IDENTITY,
        serve=lambda s, _: s.node.identity(),
    )
    read_pcrs = Op(
        "read_pcrs",
        Privilege.API,
        idempotent=True,
        args=codec(ReadPcrs),
        result=PCRS,
        serve=lambda s, a: s.node.read_pcrs(a.selection),
    )
    quote = Op(
        "quote",
        Privilege.API,
        idempotent=True,
        args=codec(Quote),
        result=QUOTE,
        serve=lambda s, a: s.node.quote(a.selection, a.qualifying_data),
    )
    activate_credential = Op(
        "activate_credential",
        Privilege.API,
        idempotent=True,
        args=codec(ActivateCredential),
        result=SECRET,
        serve=lambda s, a: s.node.activate_credential(a.id_object, a.encrypted_secret),
    )
    measure = Op(
        "measure",
        Privilege.API,
        idempotent=False,
        args=codec(Measure),
        result=RECORD,
        serve=lambda s, a: s.measure(a.kind, a.content),  # the socket's kinds only
    )
    runtime_log = Op(
        "runtime_log",
        Privilege.API,
        idempotent=True,
        args=codec(LogRead),
        result=RECORDS,
        serve=lambda s, a: s.node.runtime_log(a.start),
    )
    audit_record = Op(
        "audit_record",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(AuditRecord),
        result=ENTRY,
        serve=lambda s, a: s.node.audit_record(a.event),
        redact=True,
    )
    audit_log = Op(
        "audit_log",
        Privilege.API,
        idempotent=True,
        args=codec(LogRead),
        result=ENTRIES,
        serve=lambda s, a: s.node.audit_log(a.start),
    )
    nv_counter_read = Op(
        "nv_counter_read",
        Privilege.API,
        idempotent=True,
        args=codec(NvIndex),
        result=COUNTER,
        serve=lambda s, a: s.node.nv_counter_read(a.index),
    )
    nv_counter_define = Op(
        "nv_counter_define",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(NvIndex),
        result=COUNTER,
        serve=lambda s, a: s.node.nv_counter_define(a.index),
    )
    nv_counter_increment = Op(
        "nv_counter_increment",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(NvIndex),
        result=COUNTER,
        serve=lambda s, a: s.node.nv_counter_increment(a.index),
    )
    state_fs = Op(
        "state_fs",
        Privilege.API,
        idempotent=True,
        args=NO_ARGS,
        result=STATE_FS,
        serve=lambda s, _: s.node.state_fs(),
    )
    # Host facts: read-only, from the paths of the broker's own configuration.
    firmware_log = Op(
        "firmware_log",
        Privilege.API,
        idempotent=True,
        args=Codec(FirmwareLogRead.to_json, FirmwareLogRead.from_json),
        result=FIRMWARE_CHUNK,
        serve=lambda s, a: s.node.firmware_log(a.offset, a.max_bytes),
    )
    kernel_cmdline = Op(
        "kernel_cmdline",
        Privilege.API,
        idempotent=True,
        args=NO_ARGS,
        result=CMDLINE,
        serve=lambda s, _: s.node.kernel_cmdline(),
    )
    verity_report = Op(
        "verity_report",
        Privilege.API,
        idempotent=True,
        args=NO_ARGS,
        result=VERITY_REPORT,
        serve=lambda s, _: s.node.verity_report(),
    )
    # The guest's SEV-SNP report (attest.node.snp_guest): the device is the broker's.
    snp_report = Op(
        "snp_report",
        Privilege.API,
        idempotent=True,
        args=codec(SnpReportRequest),
        result=SNP_REPORT,
        serve=lambda s, a: s.node.snp_report(a.report_data),
    )
    # The API may offer an upload to the gate (which verifies it and records the decision) and
    # read the gate's status; it may not confirm an upgrade or select a boot slot.
    upgrade_stage = Op(
        "upgrade_stage",
        Privilege.API,
        idempotent=False,
        args=codec(UpgradeStage),
        result=codec(StagedUpgrade),
        serve=lambda s, a: s.upgrades().stage(a),
    )
    upgrade_refuse_upload = Op(
        "upgrade_refuse_upload",
        Privilege.API,
        idempotent=False,
        args=codec(UpgradeRefuseUpload),
        result=REFUSAL,
        serve=lambda s, a: s.upgrades().refuse_upload(a),
    )
    # A registry snapshot pushed without an image: the gate's trust refresh, recorded.
    registry_refresh = Op(
        "registry_refresh",
        Privilege.API,
        idempotent=False,
        args=codec(RegistryPush),
        result=REGISTRY_REFRESH,
        serve=lambda s, a: s.upgrades().refresh_registry(a),
    )
    upgrade_status = Op(
        "upgrade_status",
        Privilege.API,
        idempotent=True,
        args=NO_ARGS,
        result=codec(GateStatus),
        serve=lambda s, _: s.upgrades().status(),
    )
    upgrade_confirm = Op(
        "upgrade_confirm",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(UpgradeConfirm),
        result=codec(Confirmed),
        serve=lambda s, a: s.upgrades().confirm(a),
    )
    upgrade_boot = Op(
        "upgrade_boot",
        Privilege.OPERATOR,
        idempotent=False,
        args=NO_ARGS,
        result=codec(BootChoice),
        serve=lambda s, _: s.upgrades().boot(),
    )
    # The host's guest vTPMs (attest.node.tpm.vtpm): create, vouch, list.
    vtpm_create = Op(
        "vtpm_create",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(VtpmCreate),
        result=codec(VtpmVouched),
        serve=lambda s, a: VtpmVouched.from_json(s.vtpms().create(a.guest_id, operator=s.operator)),
    )
    vtpm_record = Op(
        "vtpm_record",
        Privilege.OPERATOR,
        idempotent=False,
        args=codec(VtpmRecord),
        result=codec(VtpmVouched),
        serve=lambda s, a: VtpmVouched.from_json(
            s.vtpms().record(a.guest_id, a.ek_public, operator=s.operator)
        ),
    )
    vtpm_list = Op(
        "vtpm_list",
        Privilege.OPERATOR,
        idempotent=True,
        args=NO_ARGS,
        result=Codec(vtpms_to_json, vtpms_from_json),
        serve=lambda s, _: s.vtpms().created(),
    )


# --- derived from the table ------------------------------------------------------------------

TABLE: tuple[Op[Any, Any], ...] = tuple(op for op in vars(OPS).values() if isinstance(op, Op))
BY_NAME: Mapping[str, Op[Any, Any]] = {op.name: op for op in TABLE}
# What each socket answers.
OPERATOR_OPS = frozenset(BY_NAME)
UNPRIVILEGED_OPS = frozenset(op.name for op in TABLE if op.privilege is Privilege.API)
OPERATOR_ONLY_OPS = OPERATOR_OPS - UNPRIVILEGED_OPS


def encode_request(op: Op[A, Any], args: A) -> bytes:
    return dumps({"op": op.name, "args": op.args.to_json(args)})


def read_request(body: bytes) -> tuple[Op[Any, Any], Any]:
    """The operation a request names (from untrusted bytes, the frame's body) and its
    arguments, still undecoded JSON; ``TransportError`` for an unknown one."""
    doc = members(loads(body, limit=MAX_REQUEST), "request", ("op", "args"))
    name = doc["op"]
    op = BY_NAME.get(name) if isinstance(name, str) else None
    if op is None:
        raise TransportError(f"unknown operation {str(name)[:40]!r}")
    return op, doc["args"]


def decode_args(op: Op[A, Any], doc: Any) -> A:
    try:
        return op.args.from_json(doc)
    except TransportError as exc:
        raise TransportError(f"{op.name}: {exc}") from None


def decode_request(body: bytes) -> Request[Any, Any]:
    """A request from untrusted bytes; ``TransportError`` otherwise."""
    op, doc = read_request(body)
    return Request(op, decode_args(op, doc))


def encode_result(op: Op[Any, R], result: R) -> bytes:
    return dumps({"ok": op.result.to_json(result)})


def decode_response(op: Op[Any, R], body: bytes) -> R:
    """The typed result of ``op``, or raise the error the broker reported (as its own class).
    ``TransportError`` when the response is malformed."""
    return op.result.from_json(read_response(body))
