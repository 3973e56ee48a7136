"""Explain events in words, and find where two logs diverge, per PCR (root-cause analysis)."""

from __future__ import annotations

from dataclasses import dataclass

from attest.eventlog.parse import Event, UnverifiedEventLog
from attest.eventlog.uefi import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_BOOT_SERVICES_DRIVER,
    EV_EFI_RUNTIME_SERVICES_DRIVER,
    EV_NO_ACTION,
    FirmwareBlob,
    GptEvent,
    HandoffTables,
    ImageLoad,
    LoadOption,
    MalformedPayload,
    NoActionEvent,
    RawPayload,
    Separator,
    Sp800155Event,
    SpdmEvent,
    SpecIdEvent,
    StartupLocality,
    TaggedEvent,
    TextPayload,
    VariableData,
)
from attest.model import HashAlg

_IMAGE_KIND = {
    EV_EFI_BOOT_SERVICES_APPLICATION: "boot application",
    EV_EFI_BOOT_SERVICES_DRIVER: "boot services driver",
    EV_EFI_RUNTIME_SERVICES_DRIVER: "runtime driver",
}


def subject(e: Event) -> str:
    """What the event measures, in a few words (stable across boots, no digests)."""
    p = e.payload
    if isinstance(p, ImageLoad):
        where = p.device_path.file_path or p.device_path.text or "(no device path)"
        return f"{_IMAGE_KIND.get(e.type, 'image')} {where}"
    if isinstance(p, VariableData):
        return f"variable {p.name}"
    if isinstance(p, TextPayload):
        return f"{e.type_name} '{p.text[:120]}'"
    if isinstance(p, Separator):
        return "separator" + (" (error)" if p.error else "")
    if isinstance(p, TaggedEvent):
        return f"tagged event {p.description or hex(p.tag_id)}"
    if isinstance(p, FirmwareBlob):
        return f"firmware blob {p.description or ''} at 0x{p.base:x}".replace("  ", " ")
    if isinstance(p, GptEvent):
        return f"GPT of disk {p.disk_guid}"
    if isinstance(p, HandoffTables):
        return "handoff tables"
    return e.type_name


def describe(e: Event) -> str:
    """A one-line decoded meaning of the event for ``attest eventlog show``."""
    p = e.payload
    if isinstance(p, SpecIdEvent):
        algs = ",".join(_alg_name(a) for a, _ in p.algorithms) or "sha1"
        return f"{p.signature} (algorithms {algs})"
    if isinstance(p, StartupLocality):
        return f"StartupLocality {p.locality}"
    if isinstance(p, Sp800155Event):
        return f"{p.signature}: {p.platform_manufacturer} {p.platform_model} {p.firmware_version}"
    if isinstance(p, NoActionEvent):
        return f"no action '{p.signature}'"
    if isinstance(p, ImageLoad):
        return f"{subject(e)} [{p.device_path.text}]" if p.device_path.file_path else subject(e)
    if isinstance(p, VariableData):
        v = p.value
        if isinstance(v, bool):
            return f"{p.name} = {int(v)}"
        if isinstance(v, LoadOption):
            return f"{p.name}: '{v.description}' {v.device_path.text}"
        if isinstance(v, tuple) and v and isinstance(v[0], int):
            return f"{p.name} = " + ",".join(f"{x:04X}" for x in v if isinstance(x, int))
        if isinstance(v, tuple):
            n = sum(len(sl.signatures) for sl in v if not isinstance(sl, int))
            return f"{p.name} ({n} signature(s), {len(p.data)} bytes)"
        return f"{p.name} ({len(p.data)} bytes)"
    if isinstance(p, SpdmEvent):
        return f"SPDM '{p.signature}'"
    if isinstance(p, MalformedPayload):
        return f"(malformed: {p.error})"
    if isinstance(p, RawPayload):
        return f"({p.note}, {len(e.data)} bytes)"
    return subject(e)


def _alg_name(a: int) -> str:
    try:
        return HashAlg(a).bank_name
    except ValueError:
        return f"0x{a:04x}"


@dataclass(frozen=True, slots=True)
class Divergence:
    pcr: int
    position: int  # the n-th measured event of this PCR (0-based)
    a: Event | None
    b: Event | None
    explanation: str

    def to_json(self) -> dict[str, object]:
        return {
            "pcr": self.pcr,
            "position": self.position,
            "a_event": None if self.a is None else self.a.index,
            "b_event": None if self.b is None else self.b.index,
            "explanation": self.explanation,
        }


def _key(e: Event, algs: tuple[int, ...]) -> tuple[object, ...]:
    return (e.type, tuple(e.digests.get(a) for a in algs))


def _explain(pcr: int, a: Event | None, b: Event | None) -> str:
    if a is None and b is not None:
        return f"PCR {pcr}: {subject(b)} added"
    if b is None and a is not None:
        return f"PCR {pcr}: {subject(a)} removed"
    assert a is not None and b is not None
    sa, sb = subject(a), subject(b)
    if a.type == b.type and sa == sb:
        return f"PCR {pcr}: {sa} changed"
    if a.type == b.type and isinstance(a.payload, ImageLoad):
        return f"PCR {pcr}: {sa} replaced by {sb.split(' ', 2)[-1]}"
    return f"PCR {pcr}: {sa} replaced by {sb}"


def diff_logs(a: UnverifiedEventLog, b: UnverifiedEventLog) -> tuple[Divergence, ...]:
    """Per PCR, the first measured event at which the two logs differ (type or digest in the
    banks both logs record), with what it means."""
    algs = tuple(int(x) for x in a.banks if x in b.banks) or (int(HashAlg.SHA1),)
    per_a: dict[int, list[Event]] = {}
    per_b: dict[int, list[Event]] = {}
    for src, dst in ((a, per_a), (b, per_b)):
        for e in src.events:
            if e.type != EV_NO_ACTION:
                dst.setdefault(e.pcr, []).append(e)
    out: list[Divergence] = []
    for pcr in sorted(set(per_a) | set(per_b)):
        ea, eb = per_a.get(pcr, []), per_b.get(pcr, [])
        for i in range(max(len(ea), len(eb))):
            x = ea[i] if i < len(ea) else None
            y = eb[i] if i < len(eb) else None
            if x is not None and y is not None and _key(x, algs) == _key(y, algs):
                continue
            out.append(Divergence(pcr, i, x, y, _explain(pcr, x, y)))
            break
    return tuple(out)
