"""Bounded parser of TCG PC Client firmware event logs: bytes -> ``UnverifiedEventLog``.

Two formats (TCG PC Client Platform Firmware Profile 1.05, §10.2):

* the SHA1 log (TPM 1.2 format, TCG_PCR_EVENT): every event carries one SHA1 digest;
* the crypto-agile log: the first event is a SHA1-format EV_NO_ACTION whose data is the
  'Spec ID Event03' structure listing the algorithms and their digest sizes; every later event
  is a TCG_PCR_EVENT2 carrying one digest per listed algorithm.

Every length is checked against what remains before anything is sliced; anything that does not
fit raises ``EventLogFormatError``. Payload decoding (``attest.eventlog.uefi``) is per event and
never fatal: a payload that does not decode is kept as ``MalformedPayload``.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from attest.errors import EventLogFormatError, PayloadError
from attest.eventlog.uefi import (
    DECODERS,
    EV_NO_ACTION,
    MalformedPayload,
    Payload,
    RawPayload,
    SpecIdEvent,
    StartupLocality,
    decode_payload,
    decode_spec_id,
    event_type_name,
)
from attest.model import HashAlg

FORMAT_SHA1 = "sha1"
FORMAT_CRYPTO_AGILE = "crypto-agile"

MAX_PCR_INDEX = 23
# Windows appends log-only EV_NO_ACTION records (SIPA "Windows AIK" data) with PCR index -1:
# they are never extended. Any other PCR index above 23 is malformed.
NO_PCR = 0xFFFFFFFF
# Far above any real event (the largest real ones are db/dbx variables, tens of KiB) and far
# below what would let a hostile size claim allocate much: we slice, never allocate, anyway.
MAX_EVENT_SIZE = 16 * 1024 * 1024
MAX_EVENTS = 1_000_000

_KNOWN_ALGS = {int(a): a for a in HashAlg}
_SHA1 = int(HashAlg.SHA1)
_HDR1 = struct.Struct("<II20sI")  # TCG_PCR_EVENT header: pcr, type, sha1 digest, size
_HDR2 = struct.Struct("<III")  # TCG_PCR_EVENT2 header: pcr, type, digest count
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_PAD_TYPES = (
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00",
    b"\xff\xff\xff",
    b"\x00\x00",
    b"\xff\xff",
    b"\x00",
    b"\xff",
    b"",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as the log states it. Nothing here is verified yet.

    ``digests`` maps TPM_ALG_ID (a ``HashAlg`` where known) to the digest bytes.
    ``index`` is the event's position in the log, counting the header event as 0.
    """

    index: int
    pcr: int
    type: int
    digests: Mapping[int, bytes]
    data: bytes
    payload: Payload

    @property
    def type_name(self) -> str:
        return event_type_name(self.type)

    def digest(self, alg: HashAlg) -> bytes | None:
        return self.digests.get(alg)


_EVENT_SLOTS = tuple(Event.__dict__[f].__set__ for f in Event.__slots__)


def _new_event(
    index: int, pcr: int, etype: int, digests: dict[int, bytes], data: bytes, payload: Payload
) -> Event:
    """Build an Event without the frozen dataclass ``__init__`` (which routes every field
    through ``object.__setattr__`` and was a fifth of the parse time). Same fields, same
    immutability afterwards."""
    ev: Event = object.__new__(Event)
    si, sp, st, sd, sa, sl = _EVENT_SLOTS
    si(ev, index)
    sp(ev, pcr)
    st(ev, etype)
    sd(ev, digests)
    sa(ev, data)
    sl(ev, payload)
    return ev


@dataclass(frozen=True, slots=True)
class UnverifiedEventLog:
    """A parsed firmware event log, not yet replayed against any quote."""

    format: str  # FORMAT_SHA1 or FORMAT_CRYPTO_AGILE
    spec_id: SpecIdEvent | None
    digest_sizes: Mapping[int, int]  # TPM_ALG_ID -> digest size, from the Spec ID event
    banks: tuple[HashAlg, ...]  # the banks this log records that attest can hash
    events: tuple[Event, ...]  # every event, the header (Spec ID) event included
    startup_locality: int
    trailing_bytes: int  # zero / 0xff padding after the last event (some firmware pads)

    @property
    def unknown_event_types(self) -> tuple[int, ...]:
        return tuple(
            sorted(
                {
                    e.type
                    for e in self.events
                    if isinstance(e.payload, RawPayload)
                    and e.payload.note.startswith("unknown event type")
                }
            )
        )

    @property
    def malformed_events(self) -> tuple[int, ...]:
        return tuple(e.index for e in self.events if isinstance(e.payload, MalformedPayload))


def _padding(data: bytes, off: int) -> bool:
    first = data[off]
    if (first != 0 and first != 0xFF) or data[off + 4 : off + 8] not in _PAD_TYPES:
        return False  # the common case: a real header; do not copy the rest of the log
    rest = data[off:]
    return not rest.strip(b"\x00") or not rest.strip(b"\xff")


def _err(msg: str, index: int, off: int) -> EventLogFormatError:
    return EventLogFormatError(f"event {index} at offset {off}: {msg}")


def _sha1_event(data: bytes, off: int, index: int) -> tuple[int, int, bytes, bytes, int]:
    if off + 32 > len(data):
        raise _err(f"truncated header: needs 32 bytes, {len(data) - off} remain", index, off)
    pcr, etype, digest, size = _HDR1.unpack_from(data, off)
    start = off + 32
    if size > MAX_EVENT_SIZE or start + size > len(data):
        raise _err(f"event size {size} exceeds the {len(data) - start} bytes left", index, off)
    if pcr > MAX_PCR_INDEX and not (pcr == NO_PCR and etype == EV_NO_ACTION):
        raise _err(f"PCR index {pcr} out of range", index, off)
    return pcr, etype, digest, data[start : start + size], start + size


def parse_event_log(data: bytes, *, strict: bool = False) -> UnverifiedEventLog:
    """Parse a firmware event log (``binary_bios_measurements``).

    Raises ``EventLogFormatError`` for anything that does not frame as a TCG log. With
    ``strict=True`` an event whose payload does not decode is an error too.

    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_event_log takes bytes")
    data = bytes(data)
    if not data:
        raise EventLogFormatError("empty event log")
    pcr, etype, digest, edata, off = _sha1_event(data, 0, 0)
    spec: SpecIdEvent | None = None
    if etype == EV_NO_ACTION and edata[:16] == b"Spec ID Event03\x00":
        # PFP §10.4.5.1: the crypto-agile log starts with a SHA1-format Spec ID event, PCR 0,
        # all-zero digest.
        if pcr != 0 or any(digest):
            raise EventLogFormatError("Spec ID event must be in PCR 0 with a zero digest")
        try:
            spec = decode_spec_id(edata)
        except EventLogFormatError as exc:
            raise EventLogFormatError(f"Spec ID event: {exc}") from exc
        first_payload: Payload = spec
        return _parse_agile(data, off, spec, pcr, etype, digest, edata, first_payload, strict)
    return _parse_sha1(data, strict)


def _check_payload(ev: Event, strict: bool) -> None:
    if strict and isinstance(ev.payload, MalformedPayload):
        raise EventLogFormatError(
            f"event {ev.index} ({ev.type_name}, PCR {ev.pcr}): {ev.payload.error}"
        )


def _locality(events: list[Event]) -> int:
    for ev in events:
        if isinstance(ev.payload, StartupLocality) and ev.pcr == 0:
            return ev.payload.locality
    return 0


def _parse_sha1(data: bytes, strict: bool) -> UnverifiedEventLog:
    events: list[Event] = []
    off = 0
    n = len(data)
    sha1 = int(HashAlg.SHA1)
    index = 0
    while off < n:
        if index and _padding(data, off):
            break
        if index >= MAX_EVENTS:
            raise _err("too many events", index, off)
        pcr, etype, digest, edata, off = _sha1_event(data, off, index)
        ev = _new_event(index, pcr, etype, {sha1: digest}, edata, decode_payload(etype, edata))
        if strict:
            _check_payload(ev, strict)
        events.append(ev)
        index += 1
    spec = events[0].payload if events and isinstance(events[0].payload, SpecIdEvent) else None
    return UnverifiedEventLog(
        FORMAT_SHA1,
        spec,
        {sha1: 20},
        (HashAlg.SHA1,),
        tuple(events),
        _locality(events),
        n - off,
    )


def _parse_agile(
    data: bytes,
    off: int,
    spec: SpecIdEvent,
    pcr0: int,
    etype0: int,
    digest0: bytes,
    edata0: bytes,
    payload0: Payload,
    strict: bool,
) -> UnverifiedEventLog:
    sizes: dict[int, int] = {}
    for alg, size in spec.algorithms:
        known = _KNOWN_ALGS.get(alg)
        if known is not None and known.digest_size != size:
            raise EventLogFormatError(
                f"Spec ID event: {known.bank_name} digest size {size}, not {known.digest_size}"
            )
        if alg in sizes:
            raise EventLogFormatError(f"Spec ID event lists algorithm 0x{alg:04x} twice")
        sizes[alg] = size
    banks = tuple(_KNOWN_ALGS[a] for a in sizes if a in _KNOWN_ALGS and _hashable(_KNOWN_ALGS[a]))
    events: list[Event] = [_new_event(0, pcr0, etype0, {_SHA1: digest0}, edata0, payload0)]
    n = len(data)
    hdr2 = _HDR2.unpack_from
    u16 = _U16.unpack_from
    u32 = _U32.unpack_from
    max_count = len(sizes)
    alg_order = tuple(sizes)
    # Fast path: the whole event header (TCG_PCR_EVENT2 up to eventSize) in one unpack, when it
    # carries every bank in the Spec ID order (what firmware writes) and fits in the data.
    whole = _event2_header(tuple(sizes.values()))
    whole_len = whole.size
    unpack_whole = whole.unpack_from
    digest_dict = _digest_dict(alg_order)
    # Event construction and payload decoding inlined (_new_event, decode_payload): a function
    # call per event was a measurable share of the parse.
    new = object.__new__
    si, sp, st, sd, sa, sl = _EVENT_SLOTS
    decoders = DECODERS.get
    append = events.append
    digests: dict[int, bytes]
    fields: _Fields
    index = 1
    while off < n:
        first = data[off]
        if (first == 0 or first == 0xFF) and _padding(data, off):
            break
        if index >= MAX_EVENTS:
            raise _err("too many events", index, off)
        start = off
        if off + whole_len <= n:
            fields = unpack_whole(data, off)
            pcr, etype, count = fields[0], fields[1], fields[2]
        else:
            if off + 12 > n:
                raise _err(f"truncated header: needs 12 bytes, {n - off} remain", index, off)
            fields = ()  # no fast path: the slow loop below reads what is there
            pcr, etype, count = hdr2(data, off)
        if pcr > MAX_PCR_INDEX and not (pcr == NO_PCR and etype == EV_NO_ACTION):
            raise _err(f"PCR index {pcr} out of range", index, start)
        if count == 0 or count > max_count:
            raise _err(f"digest count {count}, the Spec ID event lists {max_count}", index, start)
        fast = digest_dict(fields) if count == max_count and fields else None
        if fast is not None:
            digests = fast
            size = fields[-1]
            off += whole_len
        else:
            off += 12
            digests = {}
            for _ in range(count):
                if off + 2 > n:
                    raise _err("truncated digest", index, start)
                alg = u16(data, off)[0]
                known_size = sizes.get(alg)
                if known_size is None:
                    raise _err(f"algorithm 0x{alg:04x} is not in the Spec ID event", index, start)
                size = known_size
                if alg in digests:
                    raise _err(f"two digests of algorithm 0x{alg:04x}", index, start)
                off += 2
                if off + size > n:
                    raise _err("truncated digest", index, start)
                digests[alg] = data[off : off + size]
                off += size
            if off + 4 > n:
                raise _err("truncated event size", index, start)
            size = u32(data, off)[0]
            off += 4
        if size > MAX_EVENT_SIZE or off + size > n:
            raise _err(f"event size {size} exceeds the {n - off} bytes left", index, start)
        edata = data[off : off + size]
        off += size
        dec = decoders(etype)
        payload: Payload
        if dec is None:
            payload = RawPayload(f"unknown event type 0x{etype:08x}")
        else:
            try:
                payload = dec(edata)
            except PayloadError as exc:
                payload = MalformedPayload(str(exc))
        ev = new(Event)
        si(ev, index)
        sp(ev, pcr)
        st(ev, etype)
        sd(ev, digests)
        sa(ev, edata)
        sl(ev, payload)
        if strict:
            _check_payload(ev, strict)
        append(ev)
        index += 1
    return UnverifiedEventLog(
        FORMAT_CRYPTO_AGILE,
        spec,
        sizes,
        banks,
        tuple(events),
        _locality(events),
        n - off,
    )


@functools.lru_cache(maxsize=16)
def _event2_header(sizes: tuple[int, ...]) -> struct.Struct:
    """TCG_PCR_EVENT2 up to eventSize (PFP §10.2.2) when the TPML_DIGEST_VALUES holds every bank
    of the Spec ID event in its order: pcrIndex, eventType, count, (algId, digest)*, eventSize."""
    return struct.Struct("<III" + "".join(f"H{size}s" for size in sizes) + "I")


_Fields = tuple[Any, ...]


def _digest_dict(algs: tuple[int, ...]) -> Callable[[_Fields], dict[int, bytes] | None]:
    """A function from the unpacked ``_event2_header`` fields to {alg: digest}, or None when the
    algorithm IDs are not the Spec ID event's in its order. Written out for one to four banks:
    ``dict(zip(...))`` cost more than the rest of the event header."""
    if len(algs) == 1:
        (a,) = algs

        def one(f: _Fields) -> dict[int, bytes] | None:
            return {a: f[4]} if f[3] == a else None

        return one
    if len(algs) == 2:
        a, b = algs

        def two(f: _Fields) -> dict[int, bytes] | None:
            return {a: f[4], b: f[6]} if f[3] == a and f[5] == b else None

        return two
    if len(algs) == 3:
        a, b, c = algs

        def three(f: _Fields) -> dict[int, bytes] | None:
            return {a: f[4], b: f[6], c: f[8]} if f[3] == a and f[5] == b and f[7] == c else None

        return three
    if len(algs) == 4:
        a, b, c, d = algs

        def four(f: _Fields) -> dict[int, bytes] | None:
            if f[3] == a and f[5] == b and f[7] == c and f[9] == d:
                return {a: f[4], b: f[6], c: f[8], d: f[10]}
            return None

        return four

    def many(f: _Fields) -> dict[int, bytes] | None:
        return dict(zip(algs, f[4:-1:2], strict=True)) if f[3:-1:2] == algs else None

    return many


@functools.cache
def _hashable(alg: HashAlg) -> bool:
    """Whether this Python's hashlib provides the algorithm (SM3 depends on OpenSSL)."""
    try:
        alg.new()
    except ValueError:
        return False
    return True
