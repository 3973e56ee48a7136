"""Replay a parsed event log into PCRs and verify it against quoted values.

``replay(log, quoted) -> VerifiedEventLog`` keeps only events whose PCR replays into the quoted
value in every bank checked, or raises ``ReplayError`` naming the (bank, PCR) pairs that do not.

Order of checks:
1. strict replay of every bank the log and the quote share (TPM 2.0 Part 1 §17.6.4: new =
   H(old || digest); PCR 0 starts at the StartupLocality value, PFP §10.4.5.3; EV_NO_ACTION
   is never extended, PFP §10.4.1);
2. replay quirks, only for PCRs that failed (``quirks.QuirkKind.REPLAY``);
3. event-data authenticity: for event types whose digest must be the hash of the event data
   (PFP §10.4.1 Table 9 'digest' column), the hash is recomputed in every verified bank; the
   event type is not covered by the digest, so the payload of a mismatching event is untrusted;
4. structure checks (one separator per PCR 0-7, boot applications after 'Calling EFI
   Application from Boot Option'), tolerated only by named quirks.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from attest.errors import ReplayError
from attest.eventlog.parse import Event, UnverifiedEventLog
from attest.eventlog.quirks import (
    QUIRKS,
    AppliedQuirk,
    Quirk,
    QuirkKind,
)
from attest.eventlog.uefi import (
    EV_ACTION,
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_GPT_EVENT,
    EV_EFI_GPT_EVENT2,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_IPL,
    EV_NO_ACTION,
    EV_OMIT_BOOT_DEVICE_EVENTS,
    EV_S_CRTM_VERSION,
    EV_SEPARATOR,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    TaggedEvent,
    VariableData,
)
from attest.model import MAX_PCR, HashAlg, PcrValues

CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"

_FAST: dict[int, Callable[[bytes], hashlib._Hash]] = {
    int(HashAlg.SHA1): hashlib.sha1,
    int(HashAlg.SHA256): hashlib.sha256,
    int(HashAlg.SHA384): hashlib.sha384,
    int(HashAlg.SHA512): hashlib.sha512,
}


def _hasher(alg: HashAlg) -> Callable[[bytes], bytes]:
    fast = _FAST.get(int(alg))
    if fast is not None:
        f = fast
        return lambda b: f(b).digest()
    return alg.digest


def initial_value(alg: HashAlg, pcr: int, locality: int = 0) -> bytes:
    """The PCR value before the first extend of this boot (PC Client PTP: PCR 0 holds the
    startup locality in its last byte; PCRs 17-22, the DRTM PCRs, reset to all ones)."""
    size = alg.digest_size
    if pcr == 0:
        return bytes(size - 1) + bytes([locality & 0xFF])
    if 17 <= pcr <= 22:
        return b"\xff" * size
    return bytes(size)


def _replay_start(alg: HashAlg, pcr: int, locality: int) -> bytes:
    # Logged DRTM PCRs were reset to zero by the DRTM event itself; PCR 0 honours the locality.
    return (
        bytes(alg.digest_size - 1) + bytes([locality & 0xFF])
        if pcr == 0
        else bytes(alg.digest_size)
    )


def _measured(events: Iterable[Event]) -> list[Event]:
    return [e for e in events if e.type != EV_NO_ACTION]


def _chains(events: Iterable[Event]) -> dict[int, list[Mapping[int, bytes]]]:
    """The digests of each PCR's events in log order, grouped once for every bank."""
    chains: dict[int, list[Mapping[int, bytes]]] = {}
    for e in events:
        chain = chains.get(e.pcr)
        if chain is None:
            chains[e.pcr] = [e.digests]
        else:
            chain.append(e.digests)
    return chains


def _replay_bank(
    chains: Mapping[int, Sequence[Mapping[int, bytes]]], alg: HashAlg, locality: int
) -> tuple[dict[int, bytes], set[int]]:
    """Replay one bank. Returns (values of PCRs with events, PCRs an event lacked a digest in)."""
    fast = _FAST.get(int(alg))
    key = int(alg)
    zero = bytes(alg.digest_size)
    values: dict[int, bytes] = {}
    incomplete: set[int] = set()
    for pcr, chain in chains.items():
        value = _replay_start(alg, pcr, locality) if pcr == 0 else zero
        if fast is not None:  # the common case, without a call per extend
            try:
                for digests in chain:
                    value = fast(value + digests[key]).digest()
            except KeyError:
                incomplete.add(pcr)
                continue
        else:
            for digests in chain:
                d = digests.get(key)
                if d is None:
                    incomplete.add(pcr)
                    break
                value = alg.digest(value + d)
            if pcr in incomplete:
                continue
        values[pcr] = value
    return values, incomplete


def replay_pcrs(log: UnverifiedEventLog, *, banks: Iterable[HashAlg] | None = None) -> PcrValues:
    """The PCR values the log replays to, per bank, for the PCRs that have events."""
    chains = _chains(_measured(log.events))
    out: dict[HashAlg, Mapping[int, bytes]] = {}
    for alg in log.banks if banks is None else banks:
        values, _ = _replay_bank(chains, alg, log.startup_locality)
        if values:
            out[alg] = values
    return PcrValues(out)


# --- authenticity ----------------------------------------------------------------------------


class DigestStatus(enum.Enum):
    DATA = "data"  # the digest is the hash of the event data in every verified bank
    EXTERNAL = "external"  # the digest covers bytes that are not in the log (images, files, ...)
    QUIRK = "quirk"  # matched only in a form a quirk allows
    MISMATCH = "mismatch"  # the digest is not the hash of the data: the payload is untrusted


# Event types whose digest the profile defines as the hash of the event data.
_DATA_TYPES = frozenset(
    {
        EV_SEPARATOR,
        EV_ACTION,
        EV_EFI_ACTION,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        EV_EFI_VARIABLE_BOOT,
        EV_EFI_VARIABLE_BOOT2,
        EV_EFI_VARIABLE_AUTHORITY,
        EV_EFI_GPT_EVENT,
        EV_EFI_GPT_EVENT2,
        EV_S_CRTM_VERSION,
        EV_OMIT_BOOT_DEVICE_EVENTS,
        EV_EVENT_TAG,
    }
)
_GRUB_PREFIXES = (b"grub_cmd: ", b"kernel_cmdline: ", b"grub_kernel_cmdline ", b"module_cmdline: ")


def _ipl_forms(data: bytes) -> list[bytes]:
    """The byte strings boot loaders hash for an EV_IPL string event: the data itself (systemd),
    the string without its NUL, and GRUB's command without its 'grub_cmd: ' label."""
    forms = [data]
    stripped = data[:-1] if data.endswith(b"\x00") else data
    if stripped is not data:
        forms.append(stripped)
    for p in _GRUB_PREFIXES:
        if stripped.startswith(p):
            forms.append(stripped[len(p) :])
    if len(data) >= 2 and data.endswith(b"\x00\x00"):
        forms.append(data[:-2])
    return forms


def _matches(e: Event, banks: Sequence[HashAlg], forms: Sequence[bytes]) -> bool:
    for alg in banks:
        d = e.digests.get(alg)
        if d is None:
            continue
        h = _hasher(alg)
        if not any(h(f) == d for f in forms):
            return False
    return True


def _check_digest(
    e: Event, banks: Sequence[HashAlg], quirks: Sequence[Quirk]
) -> tuple[DigestStatus, Quirk | None]:
    t = e.type
    if t == EV_IPL:
        if _matches(e, banks, _ipl_forms(e.data)):
            return DigestStatus.DATA, None
        return DigestStatus.EXTERNAL, None
    if (
        t == EV_EVENT_TAG
        and isinstance(e.payload, TaggedEvent)
        and e.payload.tag_id
        in (
            LINUX_INITRD_TAG,
            LINUX_LOAD_OPTIONS_TAG,
        )
    ):
        return DigestStatus.EXTERNAL, None
    if t not in _DATA_TYPES:
        return DigestStatus.EXTERNAL, None
    if _matches(e, banks, (e.data,)):
        return DigestStatus.DATA, None
    for q in quirks:
        if q.kind is not QuirkKind.DIGEST or t not in q.event_types:
            continue
        forms: list[bytes] = []
        if q.name == "boot-variable-data-digest" and isinstance(e.payload, VariableData):
            forms = [e.payload.data]
        elif q.name == "shim-authority-trailing-byte" and len(e.data) > 1:
            forms = [e.data[:-1]]
        elif q.name == "scrtm-version-odd":
            return DigestStatus.QUIRK, q
        if forms and _matches(e, banks, forms):
            return DigestStatus.QUIRK, q
    return DigestStatus.MISMATCH, None


# --- the verified log ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedEventLog:
    """Events that replay into PCR values, with what was needed to make them do so.

    ``against_quote`` is False when the values were the log's own replay (no quote): then the
    events are only self-consistent, not verified against a TPM.
    """

    log: UnverifiedEventLog
    events: tuple[Event, ...]  # measured events of verified PCRs, in log order
    pcrs: PcrValues  # the values verified (quoted values of the PCRs the log explains)
    banks: tuple[HashAlg, ...]  # the banks checked
    digest_status: Mapping[int, DigestStatus]  # event index -> authenticity of its data
    quirks: tuple[AppliedQuirk, ...]
    anomalies: tuple[str, ...]  # structure problems no allowed quirk explains
    unlogged_pcrs: tuple[int, ...]  # quoted PCRs this log has no events for (IMA, runtime, ...)
    quirk_events: tuple[tuple[int, bytes, bytes], ...]  # (pcr, type, data) added by quirks
    against_quote: bool = True

    @property
    def untrusted_events(self) -> tuple[int, ...]:
        """Events whose payload does not match their digest: never read facts from these."""
        return tuple(i for i, s in self.digest_status.items() if s is DigestStatus.MISMATCH)

    def trusted_payload(self, event: Event) -> bool:
        return self.digest_status.get(event.index) in (DigestStatus.DATA, DigestStatus.QUIRK)

    @property
    def startup_locality(self) -> int:
        return self.log.startup_locality


def replay(
    log: UnverifiedEventLog,
    quoted: PcrValues,
    *,
    quirks: Sequence[Quirk] = QUIRKS,
) -> VerifiedEventLog:
    """Verify ``log`` against ``quoted`` PCR values; raise ``ReplayError`` if it does not replay.

    Every PCR of the quote that the log has events for is checked in every bank the log and the
    quote share, and so is every quoted PCR 0-7 (firmware PCRs, always in the firmware log: an
    event-less one must hold its reset value). Other quoted PCRs without events are returned in
    ``unlogged_pcrs`` for the caller to verify with another log (IMA, CEL).
    """
    banks = tuple(a for a in log.banks if a in quoted.values)
    if not banks:
        raise ReplayError(
            "the quote and the log share no PCR bank "
            f"(log: {[a.bank_name for a in log.banks]}, "
            f"quote: {[HashAlg(a).bank_name for a in quoted.values]})",
            invalid_pcrs=[(HashAlg(a).bank_name, i) for a, v in quoted.values.items() for i in v],
        )
    measured = _measured(log.events)
    chains = _chains(measured)
    logged = set(chains)
    locality = log.startup_locality
    verified_pcrs: set[int] = set()
    bad: list[tuple[str, int]] = []
    failing: dict[int, list[HashAlg]] = {}
    replayed: dict[HashAlg, dict[int, bytes]] = {}
    quoted_pcrs: set[int] = set()
    for alg in banks:
        values, incomplete = _replay_bank(chains, alg, locality)
        replayed[alg] = values
        q = quoted.values[alg]
        quoted_pcrs.update(q)
        for pcr, want in q.items():
            if pcr not in logged and pcr > 7:
                continue
            got = values.get(pcr, initial_value(alg, pcr, locality))
            if pcr in incomplete or got != want:
                failing.setdefault(pcr, []).append(alg)
            verified_pcrs.add(pcr)

    applied: list[AppliedQuirk] = []
    quirk_events: list[tuple[int, bytes, bytes]] = []
    for pcr, algs in sorted(failing.items()):
        fixed = False
        for quirk in quirks:
            if quirk.kind is not QuirkKind.REPLAY or quirk.pcr != pcr:
                continue
            if all(
                _with_appended(replayed[a].get(pcr, initial_value(a, pcr, locality)), a, quirk)
                == quoted.values[a][pcr]
                for a in banks
                if pcr in quoted.values[a]
            ):
                applied.append(
                    AppliedQuirk(
                        quirk.name,
                        quirk.version,
                        quirk.kind,
                        pcrs=tuple((a.bank_name, pcr) for a in banks if pcr in quoted.values[a]),
                        detail=f"appended {len(quirk.appended_events)} unlogged event(s)",
                    )
                )
                quirk_events.extend(
                    (pcr, t.to_bytes(4, "little"), d) for t, d in quirk.appended_events
                )
                fixed = True
                break
        if not fixed:
            bad.extend((a.bank_name, pcr) for a in algs)
    if bad:
        names = ", ".join(f"{b}:{p}" for b, p in bad)
        raise ReplayError(
            f"event log does not replay into the quoted PCRs {names}", invalid_pcrs=bad
        )

    events = tuple(e for e in measured if e.pcr in verified_pcrs and e.pcr in quoted_pcrs)
    return _finish(
        log,
        events,
        PcrValues(
            {a: {p: v for p, v in quoted.values[a].items() if p in verified_pcrs} for a in banks}
        ),
        banks,
        quirks,
        applied,
        tuple(sorted(quoted_pcrs - verified_pcrs)),
        tuple(quirk_events),
        against_quote=True,
    )


def replay_self(log: UnverifiedEventLog, *, quirks: Sequence[Quirk] = QUIRKS) -> VerifiedEventLog:
    """Check the log against its own replay (no quote): the events are self-consistent only.
    Use for offline inspection (``attest eventlog facts FILE``); never for appraisal."""
    own = replay_pcrs(log)
    own = PcrValues({a: own.values.get(a, {}) for a in log.banks})
    verified = replay(log, own, quirks=quirks)
    return _with_against_quote(verified, False)


def _with_against_quote(v: VerifiedEventLog, against: bool) -> VerifiedEventLog:
    return VerifiedEventLog(
        v.log,
        v.events,
        v.pcrs,
        v.banks,
        v.digest_status,
        v.quirks,
        v.anomalies,
        v.unlogged_pcrs,
        v.quirk_events,
        against,
    )


def _with_appended(value: bytes, alg: HashAlg, quirk: Quirk) -> bytes:
    h = _hasher(alg)
    for _, data in quirk.appended_events:
        value = h(value + h(data))
    return value


def _finish(
    log: UnverifiedEventLog,
    events: tuple[Event, ...],
    pcrs: PcrValues,
    banks: tuple[HashAlg, ...],
    quirks: Sequence[Quirk],
    applied: list[AppliedQuirk],
    unlogged: tuple[int, ...],
    quirk_events: tuple[tuple[int, bytes, bytes], ...],
    *,
    against_quote: bool,
) -> VerifiedEventLog:
    status: dict[int, DigestStatus] = {}
    by_quirk: dict[str, tuple[Quirk, list[int]]] = {}
    for e in events:
        s, q = _check_digest(e, banks, quirks)
        status[e.index] = s
        if q is not None:
            by_quirk.setdefault(q.name, (q, []))[1].append(e.index)
    for q, idx in by_quirk.values():
        applied.append(AppliedQuirk(q.name, q.version, q.kind, events=tuple(idx)))
    anomalies = _structure(events, quirks, applied)
    return VerifiedEventLog(
        log,
        events,
        pcrs,
        banks,
        status,
        tuple(applied),
        tuple(anomalies),
        unlogged,
        quirk_events,
        against_quote,
    )


def _structure(
    events: Sequence[Event], quirks: Sequence[Quirk], applied: list[AppliedQuirk]
) -> list[str]:
    """Structure checks of the PC Client boot flow (PFP §3.3.4, §10.4.4)."""
    anomalies: list[str] = []
    allowed = {q.name: q for q in quirks if q.kind is QuirkKind.STRUCTURE}
    seps: dict[int, list[int]] = {}
    for e in events:
        if e.type == EV_SEPARATOR and e.pcr <= 7:
            seps.setdefault(e.pcr, []).append(e.index)
    dup = {p: idx for p, idx in seps.items() if len(idx) > 1}
    if dup:
        q = allowed.get("duplicate-separator")
        if q is not None:
            applied.append(
                AppliedQuirk(
                    q.name,
                    q.version,
                    q.kind,
                    events=tuple(i for idx in dup.values() for i in idx[1:]),
                    detail="PCRs " + ",".join(str(p) for p in sorted(dup)),
                )
            )
        else:
            anomalies.extend(f"PCR {p}: {len(i)} separators" for p, i in sorted(dup.items()))
    calling_seen = False
    early: list[int] = []
    has_calling = any(
        e.type == EV_EFI_ACTION and e.pcr == 4 and e.data.startswith(CALLING_EFI_APPLICATION)
        for e in events
    )
    for e in events:
        if e.pcr != 4:
            continue
        if e.type == EV_EFI_ACTION and e.data.startswith(CALLING_EFI_APPLICATION):
            calling_seen = True
        elif e.type == EV_EFI_BOOT_SERVICES_APPLICATION and has_calling and not calling_seen:
            early.append(e.index)
    if early:
        q = allowed.get("app-before-calling-efi-application")
        if q is not None:
            applied.append(AppliedQuirk(q.name, q.version, q.kind, events=tuple(early)))
        else:
            anomalies.append(
                "PCR 4: boot application(s) before 'Calling EFI Application from Boot Option': "
                + ",".join(str(i) for i in early)
            )
    return anomalies


__all__ = [
    "MAX_PCR",
    "DigestStatus",
    "VerifiedEventLog",
    "initial_value",
    "replay",
    "replay_pcrs",
    "replay_self",
]
