"""Typed results of the broker's host-fact, upgrade-gate and guest-vTPM operations. Pure.

Each is a frozen dataclass whose ``to_json()`` is the operation's result on the wire and whose
``from_json()`` reads that result from untrusted JSON (``TransportError`` otherwise), so that
``to_json(from_json(doc)) == doc`` for every document the broker sends: the CLIs print
``to_json()`` and their output is what the broker said.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from attest.errors import AttestError, TransportError, VerityFormatError
from attest.gate import RegistryRefresh
from attest.manifest.evaluate import EmbargoState, RollbackKind
from attest.node.broker.wire import (
    Codec,
    boolean,
    hex_bytes,
    members,
    optional_text,
    text,
    uint,
)
from attest.node.port import (
    FIRMWARE_LOG_CHUNK,
    MAX_KERNEL_CMDLINE,
    MAX_SNP_CERTS,
    MAX_SNP_REPORT,
    FirmwareLogChunk,
    SnpGuestReport,
)
from attest.node.tpm.vtpm import CreatedVtpm
from attest.node.upgrade.slots import SLOTS, BootPointer
from attest.verity.devices import (
    CmdlineRootHash,
    VerityDevice,
    VerityReport,
    VerityStatus,
    parse_verity_table,
)

MAX_TEXT = 64 * 1024
MAX_FACTS = 16
E = TypeVar("E", RollbackKind, EmbargoState)
_NV_INDEX = re.compile(r"0x[0-9a-f]{8}\Z")
_DECISION = ("accepted", "reason", "message", "version", "sequence", "kind", "embargo")
_POINTER = ("format", "active", "pending", "tries", "booted", "slots", "nv_offset", "generation")
_CREATED = ("guest_id", "ek_public", "ek_sha256", "ek_cert_sha256", "state_dir", "created_at")


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TransportError(f"{what} must be an integer")
    return v


def _optional_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _slot(v: Any, what: str) -> str:
    if v not in SLOTS:
        raise TransportError(f"{what} must be one of {', '.join(SLOTS)}")
    return str(v)


def _enum(cls: type[E], v: Any, what: str) -> E:
    try:
        return cls(text(v, what, limit=64))
    except ValueError:
        raise TransportError(f"unknown {what} {str(v)[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class StagedUpgrade:
    """``upgrade_stage``: the gate's decision (``attest.gate.GateDecision.to_json()``: refusals
    come back as ``UpgradeRefused`` instead) and the slot the image was written to. ``facts``
    are the decision's integer facts (``installed_sequence``, ``nv_sequence``)."""

    accepted: bool
    reason: str
    message: str
    version: str | None
    sequence: int | None
    kind: RollbackKind | None
    embargo: EmbargoState
    slot: str | None
    facts: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "message": self.message,
            "version": self.version,
            "sequence": self.sequence,
            "kind": None if self.kind is None else self.kind.value,
            "embargo": self.embargo.value,
            **self.facts,
            "slot": self.slot,
        }

    @classmethod
    def from_json(cls, doc: Any) -> StagedUpgrade:
        if not isinstance(doc, dict) or len(doc) > len(_DECISION) + 1 + MAX_FACTS:
            raise TransportError(f"decision must be an object with at most {MAX_FACTS} facts")
        d = members(doc, "decision", (*_DECISION, "slot"), tuple(doc))
        facts = {k: _int(v, k) for k, v in d.items() if k not in (*_DECISION, "slot")}
        return cls(
            accepted=boolean(d["accepted"], "accepted"),
            reason=text(d["reason"], "reason", limit=64),
            message=text(d["message"], "message", limit=MAX_TEXT),
            version=optional_text(d["version"], "version", limit=MAX_TEXT),
            sequence=_optional_int(d["sequence"], "sequence"),
            kind=None if d["kind"] is None else _enum(RollbackKind, d["kind"], "kind"),
            embargo=_enum(EmbargoState, d["embargo"], "embargo"),
            slot=None if d["slot"] is None else _slot(d["slot"], "slot"),
            facts=facts,
        )


def _registry_refresh(doc: Any) -> RegistryRefresh:
    """``registry_refresh``: the accepted trust refresh of a pushed registry snapshot
    (``attest.gate.RegistryRefresh.to_json()``; refusals come back as ``RegistryRefused``)."""
    d = members(doc, "decision", tuple(RegistryRefresh("", "", 0, 0, 0).to_json()))
    if d["accepted"] is not True:
        raise TransportError("registry_refresh answers only accepted decisions")
    return RegistryRefresh(
        text(d["reason"], "reason", limit=64),
        text(d["message"], "message", limit=MAX_TEXT),
        uint(d["previous_sequence"], "previous_sequence"),
        uint(d["sequence"], "sequence"),
        uint(d["root_version"], "root_version"),
    )


REGISTRY_REFRESH: Codec[RegistryRefresh] = Codec(RegistryRefresh.to_json, _registry_refresh)


@dataclass(frozen=True, slots=True)
class NvCounterStatus:
    index: int
    value: int | None  # None: the counter could not be read
    committed_sequence: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": f"0x{self.index:08x}",
            "value": self.value,
            "committed_sequence": self.committed_sequence,
        }

    @classmethod
    def from_json(cls, doc: Any) -> NvCounterStatus:
        d = members(doc, "nv_counter", ("index", "value", "committed_sequence"))
        index = text(d["index"], "nv_counter index", limit=10)
        if not _NV_INDEX.match(index):
            raise TransportError("nv_counter index must be 0x and 8 hex digits")
        return cls(
            int(index, 16),
            None if d["value"] is None else uint(d["value"], "nv_counter value", bits=64),
            _optional_int(d["committed_sequence"], "committed_sequence"),
        )


@dataclass(frozen=True, slots=True)
class GateStatus:
    """``upgrade_status``: the slot pointer, the slot files and the NV counter
    (``attest.node.upgrade.stager.UpgradeGate.status()``)."""

    pointer: BootPointer
    inactive: str
    pending_confirmation: bool
    paths: Mapping[str, str]
    nv_counter: NvCounterStatus

    def to_json(self) -> dict[str, Any]:
        return {
            **self.pointer.to_json(),
            "inactive": self.inactive,
            "pending_confirmation": self.pending_confirmation,
            "paths": dict(self.paths),
            "nv_counter": self.nv_counter.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> GateStatus:
        extra = ("inactive", "pending_confirmation", "paths", "nv_counter")
        d = members(doc, "status", (*_POINTER, *extra))
        try:
            pointer = BootPointer.from_json(d)
        except AttestError as exc:
            raise TransportError(f"status: {exc}") from None
        paths = members(d["paths"], "paths", SLOTS)
        return cls(
            pointer=pointer,
            inactive=_slot(d["inactive"], "inactive"),
            pending_confirmation=boolean(d["pending_confirmation"], "pending_confirmation"),
            paths={s: text(paths[s], "path", limit=4096) for s in SLOTS},
            nv_counter=NvCounterStatus.from_json(d["nv_counter"]),
        )


@dataclass(frozen=True, slots=True)
class Confirmed:
    """``upgrade_confirm``: the slot now active and the version it holds."""

    active: str
    version: str | None

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "version": self.version}

    @classmethod
    def from_json(cls, doc: Any) -> Confirmed:
        d = members(doc, "confirmation", ("active", "version"))
        return cls(
            _slot(d["active"], "active"), optional_text(d["version"], "version", limit=MAX_TEXT)
        )


@dataclass(frozen=True, slots=True)
class BootChoice:
    """``upgrade_boot``: the slot to boot, its version, and why."""

    slot: str
    version: str
    fell_back: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "version": self.version,
            "fell_back": self.fell_back,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Any) -> BootChoice:
        d = members(doc, "boot", ("slot", "version", "fell_back", "reason"))
        return cls(
            _slot(d["slot"], "slot"),
            text(d["version"], "version", limit=MAX_TEXT),
            boolean(d["fell_back"], "fell_back"),
            text(d["reason"], "reason", limit=MAX_TEXT),
        )


def _created(doc: Any) -> CreatedVtpm:
    try:
        return CreatedVtpm.from_json(doc)
    except AttestError as exc:
        raise TransportError(f"vTPM: {exc}") from None


@dataclass(frozen=True, slots=True)
class VtpmVouched:
    """``vtpm_create`` / ``vtpm_record``: the guest's vTPM and the runtime event that vouches
    for it (``recorded`` False: this boot's log already held it)."""

    vtpm: CreatedVtpm
    recnum: int
    recorded: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.vtpm.to_json(), "recnum": self.recnum, "recorded": self.recorded}

    @classmethod
    def from_json(cls, doc: Any) -> VtpmVouched:
        d = members(doc, "vTPM vouching", (*_CREATED, "recnum", "recorded"))
        return cls(
            _created({k: d[k] for k in _CREATED}),
            uint(d["recnum"], "recnum"),
            boolean(d["recorded"], "recorded"),
        )


def vtpms_to_json(vtpms: tuple[CreatedVtpm, ...]) -> dict[str, Any]:
    """``vtpm_list``: the host's created set."""
    return {"vtpms": [v.to_json() for v in vtpms]}


def vtpms_from_json(doc: Any) -> tuple[CreatedVtpm, ...]:
    raw = members(doc, "vTPM list", ("vtpms",))["vtpms"]
    if not isinstance(raw, list):
        raise TransportError("vtpms must be a list")
    return tuple(_created(members(v, "vTPM", _CREATED)) for v in raw)


# --- host facts (attest.node.broker.host) ----------------------------------------------------

MAX_VERITY_DEVICES = 256
MAX_VERITY_TEXT = 4096  # a table line, an error
MAX_VERITY_NAME = 128  # DM_NAME_LEN
MAX_VERITY_UUID = 129  # DM_UUID_LEN


def firmware_chunk_to_json(chunk: FirmwareLogChunk | None) -> dict[str, Any]:
    if chunk is None:
        return {"present": False}
    return {
        "present": True,
        "offset": chunk.offset,
        "total": chunk.total,
        "data": chunk.data.hex(),
    }


def firmware_chunk_from_json(doc: Any) -> FirmwareLogChunk | None:
    """A chunk of at most ``FIRMWARE_LOG_CHUNK`` bytes lying inside the log it says it is of."""
    d = members(doc, "firmware_log", ("present",), ("offset", "total", "data"))
    if not boolean(d["present"], "present"):
        if len(d) != 1:
            raise TransportError("firmware_log: an absent log has no offset, total or data")
        return None
    d = members(doc, "firmware_log", ("present", "offset", "total", "data"))
    chunk = FirmwareLogChunk(
        offset=uint(d["offset"], "offset"),
        total=uint(d["total"], "total"),
        data=hex_bytes(d["data"], "data", limit=FIRMWARE_LOG_CHUNK),
    )
    if chunk.offset + len(chunk.data) > chunk.total:
        raise TransportError("firmware_log: the chunk ends past the log's total size")
    return chunk


def cmdline_to_json(cmdline: str | None) -> dict[str, Any]:
    return {"cmdline": cmdline}


def cmdline_from_json(doc: Any) -> str | None:
    d = members(doc, "kernel_cmdline", ("cmdline",))
    return optional_text(d["cmdline"], "cmdline", limit=MAX_KERNEL_CMDLINE)


def _device_to_json(dev: VerityDevice) -> dict[str, Any]:
    return {
        "name": dev.name,
        "uuid": dev.uuid,
        "devno": dev.devno,
        "table": None if dev.table is None else dev.table.to_line(),
        "status": dev.status.value,
        "error": None if dev.error is None else dev.error[:MAX_VERITY_TEXT],
    }


def _status(v: Any) -> VerityStatus:
    try:
        return VerityStatus(text(v, "status", limit=64))
    except ValueError:
        raise TransportError(f"unknown status {str(v)[:40]!r}") from None


def _device_from_json(doc: Any) -> VerityDevice:
    d = members(doc, "device", ("name", "uuid", "devno", "table", "status", "error"))
    line = optional_text(d["table"], "table", limit=MAX_VERITY_TEXT)
    try:
        table = None if line is None else parse_verity_table(line)
    except VerityFormatError as exc:
        raise TransportError(f"device table: {exc}") from None
    return VerityDevice(
        name=text(d["name"], "name", limit=MAX_VERITY_NAME),
        uuid=text(d["uuid"], "uuid", limit=MAX_VERITY_UUID),
        devno=optional_text(d["devno"], "devno", limit=32),
        table=table,
        status=_status(d["status"]),
        error=optional_text(d["error"], "error", limit=MAX_VERITY_TEXT),
    )


def _root_hash_from_json(doc: Any) -> CmdlineRootHash:
    d = members(doc, "cmdline_root_hash", ("parameter", "root_hash", "backed_by"))
    backed = d["backed_by"]
    if not isinstance(backed, list) or len(backed) > MAX_VERITY_DEVICES:
        raise TransportError(f"backed_by must be a list of at most {MAX_VERITY_DEVICES}")
    return CmdlineRootHash(
        parameter=text(d["parameter"], "parameter", limit=64),
        root_hash=hex_bytes(d["root_hash"], "root_hash", limit=64),
        backed_by=tuple(text(n, "backed_by", limit=MAX_VERITY_NAME) for n in backed),
    )


def verity_report_to_json(report: VerityReport | None) -> dict[str, Any]:
    """The report as the broker sends it: each device's table as its dm table line (parsed
    again, bounded, by the receiver), the command line's root hashes as evaluated."""
    if report is None:
        return {"report": None}
    return {
        "report": {
            "devices": [_device_to_json(d) for d in report.devices],
            "cmdline_root_hashes": [
                {
                    "parameter": h.parameter,
                    "root_hash": h.root_hash.hex(),
                    "backed_by": list(h.backed_by),
                }
                for h in report.cmdline_root_hashes
            ],
        }
    }


def verity_report_from_json(doc: Any) -> VerityReport | None:
    r = members(doc, "verity_report", ("report",))["report"]
    if r is None:
        return None
    d = members(r, "report", ("devices", "cmdline_root_hashes"))
    devices, hashes = d["devices"], d["cmdline_root_hashes"]
    for v, what in ((devices, "devices"), (hashes, "cmdline_root_hashes")):
        if not isinstance(v, list) or len(v) > MAX_VERITY_DEVICES:
            raise TransportError(f"{what} must be a list of at most {MAX_VERITY_DEVICES}")
    return VerityReport(
        devices=tuple(_device_from_json(x) for x in devices),
        cmdline_root_hashes=tuple(_root_hash_from_json(x) for x in hashes),
    )


def snp_report_to_json(report: SnpGuestReport | None) -> dict[str, Any]:
    if report is None:
        return {"report": None, "certs": None}
    return {
        "report": report.report.hex(),
        "certs": None if report.certs is None else report.certs.hex(),
    }


def snp_report_from_json(doc: Any) -> SnpGuestReport | None:
    """A report of at most ``MAX_SNP_REPORT`` bytes and a table of at most ``MAX_SNP_CERTS``."""
    d = members(doc, "snp_report", ("report", "certs"))
    if d["report"] is None:
        if d["certs"] is not None:
            raise TransportError("snp_report: certificates without a report")
        return None
    report = hex_bytes(d["report"], "report", limit=MAX_SNP_REPORT)
    certs = None if d["certs"] is None else hex_bytes(d["certs"], "certs", limit=MAX_SNP_CERTS)
    return SnpGuestReport(report, certs)


FIRMWARE_CHUNK: Codec[FirmwareLogChunk | None] = Codec(
    firmware_chunk_to_json, firmware_chunk_from_json
)
CMDLINE: Codec[str | None] = Codec(cmdline_to_json, cmdline_from_json)
VERITY_REPORT: Codec[VerityReport | None] = Codec(verity_report_to_json, verity_report_from_json)
SNP_REPORT: Codec[SnpGuestReport | None] = Codec(snp_report_to_json, snp_report_from_json)
