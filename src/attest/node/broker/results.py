"""Typed results of the broker's upgrade-gate and guest-vTPM operations. Pure.

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

from attest.errors import AttestError, TransportError
from attest.manifest.evaluate import EmbargoState, RollbackKind
from attest.node.broker.wire import boolean, members, optional_text, text, uint
from attest.node.tpm.vtpm import CreatedVtpm
from attest.node.upgrade.slots import SLOTS, BootPointer

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
