"""The runtime measurement log: typed events of the node daemon, and their verification.

Pure: records in, typed events out; no files, no TPM, no clock.

The privileged helper (``attestd-tpm``) keeps a TCG Canonical Event Log (CEL 1.0, JSON
encoding) of what happened on the node after boot, and extends every record into one PCR, the
*runtime PCR* (13 by default; ``docs/runtime-log.md`` says why). Each record is

- ``content_type``: ``"attest/<kind>"``;
- ``content``: the event's typed content (below), a JSON object;
- ``digests``: in every bank, the hash of the *measured bytes* ``canonicalize({"kind": kind,
  "content": content})`` (RFC 8785).

So a verifier recomputes each digest from the content it is shown (content authenticity): a
record whose content was edited after it was measured is rejected even if its digests replay.

Event kinds and their content (digests are lower-case hex at the edge, ``bytes`` inside):

=================  ========================================================================
``daemon-start``   ``{version, boot_id?}``
``config``         ``{sha256}`` digest of the loaded policy / configuration
``tls-key``        ``{spki_sha256}`` digest of the API's TLS SubjectPublicKeyInfo (DER)
``verity-device``  ``{name, root_hash, ...}`` a dm-verity device seen (extra members allowed)
``upgrade-decision`` ``{accepted, reason, version, ...}`` an upgrade-gate decision
``audit``          ``{audit_seq, entry_hash}`` anchors an operator-audit entry (``attest.audit``)
``audit-close``    ``{entries, head}`` the broker closed the audit log cleanly: ``entries``
                   entries, the last one's hash ``head`` (all zero for none)
``audit-unanchored`` ``{first_seq, last_seq, clean_stop, previous_boot}`` at start the broker
                   found entries it had not anchored: appended while it was stopped
                   (``clean_stop``: after its ``audit-close``, so not written by attest) or
                   left by a crash between writing and anchoring (indistinguishable then);
                   ``previous_boot``: judged against the log of the boot before a TPM reset
``nv-counter``     ``{index, value}`` an NV counter value (rollback protection)
``vtpm``           ``{guest_id, ek_sha256, ek_cert_sha256?}`` a guest vTPM this host created
                   and vouches for (``attest.node.tpm.vtpm``; sha256 of the EK TPMT_PUBLIC)
``policy``         ``{mac, sha256}`` the mandatory access control policy loaded (e.g.
                   ``selinux`` and the sha256 of ``/sys/fs/selinux/policy``)
=================  ========================================================================
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attest.errors import AttestError, EventLogFormatError, ReplayError
from attest.eventlog.cel import CelRecord, new_record, verify_cel
from attest.manifest.canonical import canonicalize
from attest.model import HashAlg, PcrValues, extend

DEFAULT_RUNTIME_PCR = 13
CONTENT_TYPE_PREFIX = "attest/"
MAX_CONTENT_BYTES = 16 * 1024  # canonical measured bytes of one event

KIND_DAEMON_START = "daemon-start"
KIND_CONFIG = "config"
KIND_TLS_KEY = "tls-key"
KIND_VERITY_DEVICE = "verity-device"
KIND_UPGRADE_DECISION = "upgrade-decision"
KIND_REGISTRY_DECISION = "registry-decision"
KIND_AUDIT = "audit"
KIND_AUDIT_CLOSE = "audit-close"
KIND_AUDIT_UNANCHORED = "audit-unanchored"
KIND_NV_COUNTER = "nv-counter"
KIND_VTPM = "vtpm"
KIND_POLICY = "policy"
KIND_SNP_HOST = "snp-host"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}\Z")
_HEX = re.compile(r"(?:[0-9a-f]{2}){1,64}\Z")


# --- typed content ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonStart:
    version: str
    boot_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigDigest:
    sha256: bytes


@dataclass(frozen=True, slots=True)
class TlsKey:
    spki_sha256: bytes


@dataclass(frozen=True, slots=True)
class VerityDevice:
    name: str
    root_hash: bytes
    extra: Mapping[str, Any]  # any further members, as measured (e.g. data_device, salt)


@dataclass(frozen=True, slots=True)
class UpgradeDecision:
    accepted: bool
    reason: str
    version: str
    extra: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RegistryDecision:
    """A registry snapshot pushed to the node without an image: accepted (``sequence`` the
    node now trusts) or refused (``reason``), ``previous_sequence`` the one it trusted."""

    accepted: bool
    reason: str
    previous_sequence: int
    sequence: int | None
    extra: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    audit_seq: int
    entry_hash: bytes


@dataclass(frozen=True, slots=True)
class AuditClose:
    """The audit log was closed cleanly with ``entries`` entries, the last one ``head``."""

    entries: int
    head: bytes


@dataclass(frozen=True, slots=True)
class AuditUnanchored:
    """Entries ``first_seq..last_seq`` were in the audit log but not anchored when the broker
    started: written while it was stopped. ``clean_stop``: it had closed the log cleanly
    before (``AuditClose``), so no attest process wrote them; otherwise a crash between
    writing an entry and anchoring it would leave the same trace. ``previous_boot``: the last
    record of the audit log was in the runtime log of the boot before a TPM reset (a file no
    PCR binds any more)."""

    first_seq: int
    last_seq: int
    clean_stop: bool
    previous_boot: bool


@dataclass(frozen=True, slots=True)
class NvCounter:
    index: int
    value: int


@dataclass(frozen=True, slots=True)
class VtpmVouch:
    """The host created the guest ``guest_id``'s vTPM, whose EK is ``ek_sha256``."""

    guest_id: str
    ek_sha256: bytes
    ek_cert_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class SnpHostChip:
    """This host's AMD CPU is the chip ``chip_id`` (64 bytes, as AMD-SP reports it: SEV_GET_ID2),
    read by attestd-tpm at start (``--snp-host``). An SEV-SNP guest's VCEK-signed report names
    the chip it runs on (CHIP_ID), so a host quote holding this event vouches that such a guest
    runs on this host (docs/snp.md, "A guest without a vTPM")."""

    chip_id: bytes


@dataclass(frozen=True, slots=True)
class MacPolicy:
    mac: str  # selinux, apparmor, smack, ...
    sha256: bytes


EventDetail = (
    DaemonStart
    | ConfigDigest
    | TlsKey
    | VerityDevice
    | UpgradeDecision
    | RegistryDecision
    | AuditAnchor
    | AuditClose
    | AuditUnanchored
    | NvCounter
    | VtpmVouch
    | SnpHostChip
    | MacPolicy
)


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """One verified runtime event: its record number, kind, content as measured, and the
    typed reading of that content."""

    recnum: int
    kind: str
    content: Mapping[str, Any]
    detail: EventDetail


def _fail(kind: str, msg: str) -> EventLogFormatError:
    return EventLogFormatError(f"runtime event {kind!r}: {msg}")


def _members(
    kind: str,
    c: Mapping[str, Any],
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    open_: bool = False,
) -> None:
    missing = [k for k in required if k not in c]
    if missing:
        raise _fail(kind, f"missing {', '.join(missing)}")
    if not open_:
        extra = sorted(set(c) - set(required) - set(optional))
        if extra:
            raise _fail(kind, f"unknown member(s) {', '.join(e[:40] for e in extra[:5])}")


def _str(kind: str, c: Mapping[str, Any], key: str, *, limit: int = 256) -> str:
    v = c[key]
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise _fail(kind, f"{key} must be a non-empty string of at most {limit} characters")
    return v


def _digest(kind: str, c: Mapping[str, Any], key: str, *, size: int | None = 32) -> bytes:
    v = c[key]
    if not isinstance(v, str) or not _HEX.match(v):
        raise _fail(kind, f"{key} must be lower-case hex")
    b = bytes.fromhex(v)
    if size is not None and len(b) != size:
        raise _fail(kind, f"{key} must be {size} bytes, not {len(b)}")
    return b


def _uint(kind: str, c: Mapping[str, Any], key: str, *, bits: int = 53) -> int:
    v = c[key]
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**bits:
        raise _fail(kind, f"{key} must be an integer in 0..2**{bits}-1")
    return v


def _daemon_start(c: Mapping[str, Any]) -> DaemonStart:
    _members(KIND_DAEMON_START, c, ("version",), ("boot_id",))
    boot = _str(KIND_DAEMON_START, c, "boot_id", limit=64) if "boot_id" in c else None
    return DaemonStart(_str(KIND_DAEMON_START, c, "version", limit=64), boot)


def _config(c: Mapping[str, Any]) -> ConfigDigest:
    _members(KIND_CONFIG, c, ("sha256",))
    return ConfigDigest(_digest(KIND_CONFIG, c, "sha256"))


def _tls_key(c: Mapping[str, Any]) -> TlsKey:
    _members(KIND_TLS_KEY, c, ("spki_sha256",))
    return TlsKey(_digest(KIND_TLS_KEY, c, "spki_sha256"))


def _verity(c: Mapping[str, Any]) -> VerityDevice:
    _members(KIND_VERITY_DEVICE, c, ("name", "root_hash"), open_=True)
    name = _str(KIND_VERITY_DEVICE, c, "name", limit=128)
    root = _digest(KIND_VERITY_DEVICE, c, "root_hash", size=None)
    return VerityDevice(name, root, {k: v for k, v in c.items() if k not in ("name", "root_hash")})


def _upgrade(c: Mapping[str, Any]) -> UpgradeDecision:
    kind = KIND_UPGRADE_DECISION
    _members(kind, c, ("accepted", "reason", "version"), open_=True)
    if not isinstance(c["accepted"], bool):
        raise _fail(kind, "accepted must be true or false")
    extra = {k: v for k, v in c.items() if k not in ("accepted", "reason", "version")}
    return UpgradeDecision(
        c["accepted"],
        _str(kind, c, "reason", limit=128),
        _str(kind, c, "version", limit=128),
        extra,
    )


def _audit(c: Mapping[str, Any]) -> AuditAnchor:
    _members(KIND_AUDIT, c, ("audit_seq", "entry_hash"))
    return AuditAnchor(_uint(KIND_AUDIT, c, "audit_seq"), _digest(KIND_AUDIT, c, "entry_hash"))


def _registry(c: Mapping[str, Any]) -> RegistryDecision:
    kind = KIND_REGISTRY_DECISION
    _members(kind, c, ("accepted", "reason", "previous_sequence"), open_=True)
    if not isinstance(c["accepted"], bool):
        raise _fail(kind, "accepted must be true or false")
    seq = _uint(kind, c, "sequence") if c.get("sequence") is not None else None
    if c["accepted"] and seq is None:
        raise _fail(kind, "an accepted snapshot names its sequence")
    known = ("accepted", "reason", "previous_sequence", "sequence")
    return RegistryDecision(
        c["accepted"],
        _str(kind, c, "reason", limit=128),
        _uint(kind, c, "previous_sequence"),
        seq,
        {k: v for k, v in c.items() if k not in known},
    )


def _audit_close(c: Mapping[str, Any]) -> AuditClose:
    _members(KIND_AUDIT_CLOSE, c, ("entries", "head"))
    return AuditClose(_uint(KIND_AUDIT_CLOSE, c, "entries"), _digest(KIND_AUDIT_CLOSE, c, "head"))


def _audit_unanchored(c: Mapping[str, Any]) -> AuditUnanchored:
    kind = KIND_AUDIT_UNANCHORED
    _members(kind, c, ("first_seq", "last_seq", "clean_stop", "previous_boot"))
    first, last = _uint(kind, c, "first_seq"), _uint(kind, c, "last_seq")
    if last < first:
        raise _fail(kind, "last_seq must not be below first_seq")
    flags = [c[k] for k in ("clean_stop", "previous_boot")]
    if not all(isinstance(f, bool) for f in flags):
        raise _fail(kind, "clean_stop and previous_boot must be true or false")
    return AuditUnanchored(first, last, flags[0], flags[1])


def _nv(c: Mapping[str, Any]) -> NvCounter:
    _members(KIND_NV_COUNTER, c, ("index", "value"))
    return NvCounter(
        _uint(KIND_NV_COUNTER, c, "index", bits=32), _uint(KIND_NV_COUNTER, c, "value")
    )


def _vtpm(c: Mapping[str, Any]) -> VtpmVouch:
    _members(KIND_VTPM, c, ("guest_id", "ek_sha256"), ("ek_cert_sha256",))
    guest = _str(KIND_VTPM, c, "guest_id", limit=128)
    if not _NAME.match(guest):
        raise _fail(KIND_VTPM, "guest_id must be a name ([A-Za-z0-9._:@+/-], at most 128)")
    cert = _digest(KIND_VTPM, c, "ek_cert_sha256") if "ek_cert_sha256" in c else None
    return VtpmVouch(guest, _digest(KIND_VTPM, c, "ek_sha256"), cert)


def _snp_host(c: Mapping[str, Any]) -> SnpHostChip:
    _members(KIND_SNP_HOST, c, ("chip_id",))
    chip = _digest(KIND_SNP_HOST, c, "chip_id", size=64)
    if not any(chip):
        raise _fail(KIND_SNP_HOST, "chip_id is all zero (masked): it names no chip")
    return SnpHostChip(chip)


def _policy(c: Mapping[str, Any]) -> MacPolicy:
    _members(KIND_POLICY, c, ("mac", "sha256"))
    mac = _str(KIND_POLICY, c, "mac", limit=32)
    if not _NAME.match(mac):
        raise _fail(KIND_POLICY, "mac must be a short name")
    return MacPolicy(mac, _digest(KIND_POLICY, c, "sha256"))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], EventDetail]] = {
    KIND_DAEMON_START: _daemon_start,
    KIND_CONFIG: _config,
    KIND_TLS_KEY: _tls_key,
    KIND_VERITY_DEVICE: _verity,
    KIND_UPGRADE_DECISION: _upgrade,
    KIND_REGISTRY_DECISION: _registry,
    KIND_AUDIT: _audit,
    KIND_AUDIT_CLOSE: _audit_close,
    KIND_AUDIT_UNANCHORED: _audit_unanchored,
    KIND_NV_COUNTER: _nv,
    KIND_VTPM: _vtpm,
    KIND_SNP_HOST: _snp_host,
    KIND_POLICY: _policy,
}
KINDS: frozenset[str] = frozenset(_PARSERS)
# Written by the audit log itself (attest.node.logs.audit), never on request.
AUDIT_KINDS: frozenset[str] = frozenset({KIND_AUDIT, KIND_AUDIT_CLOSE, KIND_AUDIT_UNANCHORED})


def parse_content(kind: str, content: Mapping[str, Any]) -> EventDetail:
    """The typed reading of an event's content; ``EventLogFormatError`` when the kind is
    unknown or the content does not have the kind's shape."""
    parser = _PARSERS.get(kind)
    if parser is None:
        raise EventLogFormatError(f"unknown runtime event kind {kind[:64]!r}")
    if not isinstance(content, Mapping):
        raise _fail(kind, "content must be a JSON object")
    return parser(content)


def measured_bytes(kind: str, content: Mapping[str, Any]) -> bytes:
    """The bytes whose hash is extended for an event: RFC 8785 of ``{kind, content}``."""
    try:
        data = canonicalize({"kind": kind, "content": dict(content)})
    except AttestError as exc:  # ManifestFormatError from the canonicaliser
        raise _fail(kind, f"content is not canonical JSON: {exc}") from None
    if len(data) > MAX_CONTENT_BYTES:
        raise _fail(kind, f"content is {len(data)} bytes, limit {MAX_CONTENT_BYTES}")
    return data


def new_runtime_record(
    recnum: int, kind: str, content: Mapping[str, Any], *, pcr: int, banks: Sequence[HashAlg]
) -> CelRecord:
    """Check ``content`` against its kind and build the CEL record to append and extend."""
    parse_content(kind, content)
    return new_record(
        recnum,
        pcr,
        measured_bytes(kind, content),
        content_type=CONTENT_TYPE_PREFIX + kind,
        content=content,
        banks=banks,
    )


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedRuntimeLog:
    """A runtime log that replayed into the quoted runtime PCR, every record's content
    authentic."""

    pcr: int
    records: tuple[CelRecord, ...]
    events: tuple[RuntimeEvent, ...]
    last: Mapping[str, RuntimeEvent]  # kind -> its latest event (``_last_of_kind``)

    def of_kind(self, kind: str) -> tuple[RuntimeEvent, ...]:
        return tuple(e for e in self.events if e.kind == kind)

    def latest(self, kind: str) -> RuntimeEvent | None:
        """The latest event of ``kind`` (a lookup: kept up to date as records are added)."""
        return self.last.get(kind)

    @property
    def audit_anchors(self) -> tuple[AuditAnchor, ...]:
        """The audit anchors, in log order, for ``attest.audit.verify_audit_chain``."""
        return tuple(e.detail for e in self.events if isinstance(e.detail, AuditAnchor))

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "events": [
                {"recnum": e.recnum, "kind": e.kind, "content": dict(e.content)}
                for e in self.events
            ],
        }


def check_records(
    records: Sequence[CelRecord], *, pcr: int, start: int = 0
) -> tuple[RuntimeEvent, ...]:
    """Structure and content authenticity of a runtime log, without a quote: record numbers
    0..n-1 in order (``start``..``start``+n-1 for the records after the first ``start``), all
    on ``pcr``, known kinds with well-formed content, and every digest the hash of the measured
    bytes. Raises ``EventLogFormatError`` or ``ReplayError``."""
    events: list[RuntimeEvent] = []
    for i, r in enumerate(records, start):
        if r.recnum != i:
            raise EventLogFormatError(
                f"runtime log record {i} has recnum {r.recnum}: records must be numbered "
                f"0..n-1 without gaps"
            )
        if r.pcr != pcr:
            raise EventLogFormatError(f"runtime log record {i} is on PCR {r.pcr}, not {pcr}")
        if not r.content_type.startswith(CONTENT_TYPE_PREFIX):
            raise EventLogFormatError(
                f"runtime log record {i}: content type {r.content_type[:64]!r} is not attest/*"
            )
        kind = r.content_type[len(CONTENT_TYPE_PREFIX) :]
        detail = parse_content(kind, r.content)
        measured = measured_bytes(kind, r.content)
        bad = [
            (alg.bank_name, pcr)
            for alg, digest in r.digests.items()
            if not hmac.compare_digest(HashAlg(alg).digest(measured), digest)
        ]
        if bad:
            raise ReplayError(
                f"runtime log record {i} ({kind}): the content is not what was measured "
                f"(digest differs in {', '.join(b for b, _ in bad)})",
                invalid_pcrs=bad,
            )
        events.append(RuntimeEvent(i, kind, r.content, detail))
    return tuple(events)


def verify_runtime_log(
    records: Sequence[CelRecord], quoted: PcrValues, *, pcr: int = DEFAULT_RUNTIME_PCR
) -> VerifiedRuntimeLog:
    """Verify an (untrusted) runtime log against quoted PCR values.

    1. structure: recnum 0..n-1 contiguous, every record on ``pcr``, known kinds, well-formed
       content (``EventLogFormatError``);
    2. content authenticity: each digest is the hash of the record's measured bytes
       (``ReplayError``), so content edited after it was measured fails even when the
       digests replay;
    3. replay: extending every record's digest from zero reproduces the quoted ``pcr`` in every
       bank the quote and the log share (TPM 2.0 Part 1 §17.6.4; ``ReplayError``). The PCR
       must hold nothing but these records, so a truncated or extended log fails here.
    """
    records = tuple(records)
    events = check_records(records, pcr=pcr)  # 1, 2
    verify_cel(records, quoted, pcrs=[pcr])  # 3
    return VerifiedRuntimeLog(pcr, records, events, _last_of_kind({}, events))


def _last_of_kind(
    held: Mapping[str, RuntimeEvent], events: Sequence[RuntimeEvent]
) -> dict[str, RuntimeEvent]:
    out = dict(held)
    for e in events:
        out[e.kind] = e
    return out


# --- incremental verification ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeReplay:
    """A runtime log verified against a quote, with its replay: ``values`` is the runtime PCR's
    value per bank after every record (the banks in which every record has a digest). What a
    verifier keeps so that the next quote's log is checked from where this one ended."""

    log: VerifiedRuntimeLog
    values: Mapping[HashAlg, bytes]
    anchors: tuple[AuditAnchor, ...] = ()
    # Records served after the ones the quote covers (recorded between the quote and the log
    # read): not verified, not kept; the next quote covers them.
    unquoted: int = 0

    @property
    def next_recnum(self) -> int:
        return len(self.log.records)


def _replayed(
    values: Mapping[HashAlg, bytes], records: Sequence[CelRecord]
) -> dict[HashAlg, bytes]:
    out = dict(values)
    for r in records:
        out = {a: extend(a, v, r.digests[a]) for a, v in out.items() if a in r.digests}
    return out


def verify_runtime_log_from(
    held: RuntimeReplay | None,
    new_records: Sequence[CelRecord],
    quoted: PcrValues,
    *,
    pcr: int = DEFAULT_RUNTIME_PCR,
) -> RuntimeReplay:
    """``verify_runtime_log`` of ``held``'s records followed by ``new_records``, checking only
    the new ones: structure and content authenticity of the new records (numbered from
    ``held.next_recnum``), then the replay -- ``held``'s running value per bank extended by
    the new digests -- against the quoted ``pcr``.

    The result equals ``verify_runtime_log(held records + new_records, quoted)`` (same
    records, events, and the same errors for the new records and the replay) provided that
    ``held`` was verified against an earlier quote *of the same TPM reset epoch*: the PCR can
    only be extended, so ``H(...H(H(0 || d0) || d1)... || dn)`` commits to the whole sequence and
    a change to any held record would make the quoted value differ from ``held.values``
    extended by the new digests. ``held=None`` is the full verification."""
    start = 0 if held is None else held.next_recnum
    records = tuple(new_records)
    events = check_records(records, pcr=pcr, start=start)  # 1, 2 (new records only)
    zero = {a: bytes(a.digest_size) for a in HashAlg}
    base: Mapping[HashAlg, bytes] = zero if held is None else held.values
    values = _replayed(base, records)
    unquoted = 0
    if not _matches(values, quoted, pcr):
        # A node reads its log after the quote: an event recorded in between is served but
        # not quoted. Only a prefix that replays into the quoted value is verified; the tail
        # is dropped (not trusted) and is covered by the next quote.
        k = _quoted_prefix(base, records, quoted, pcr)
        if k is not None:
            unquoted = len(records) - k
            records, events = records[:k], events[:k]
            values = _replayed(base, records)
    # 3: as verify_cel: every quoted bank in which every record has a digest must match.
    bad: list[tuple[str, int]] = []
    checked = False
    for alg, quoted_values in quoted.values.items():
        alg = HashAlg(alg)
        got = values.get(alg)
        if got is None or pcr not in quoted_values:
            continue
        checked = True
        if got != quoted_values[pcr]:
            bad.append((alg.bank_name, pcr))
    if bad or not checked:
        raise ReplayError(
            "runtime log does not replay into the quoted PCRs "
            + (", ".join(f"{b}:{p}" for b, p in bad) or "(no common bank / PCR)"),
            invalid_pcrs=bad,
        )
    anchors = tuple(e.detail for e in events if isinstance(e.detail, AuditAnchor))
    if held is None:
        log = VerifiedRuntimeLog(pcr, records, events, _last_of_kind({}, events))
        return RuntimeReplay(log, values, anchors, unquoted)
    log = VerifiedRuntimeLog(
        pcr,
        held.log.records + records,
        held.log.events + events,
        _last_of_kind(held.log.last, events),
    )
    return RuntimeReplay(log, values, held.anchors + anchors, unquoted)


def _matches(values: Mapping[HashAlg, bytes], quoted: PcrValues, pcr: int) -> bool:
    """Every quoted bank in which every record has a digest holds ``values`` (and one does)."""
    checked = False
    for alg, quoted_values in quoted.values.items():
        got = values.get(HashAlg(alg))
        if got is None or pcr not in quoted_values:
            continue
        if got != quoted_values[pcr]:
            return False
        checked = True
    return checked


def _quoted_prefix(
    base: Mapping[HashAlg, bytes], records: Sequence[CelRecord], quoted: PcrValues, pcr: int
) -> int | None:
    """The length of the longest proper prefix of ``records`` that replays into the quoted
    value, or None."""
    running = dict(base)
    found = 0 if _matches(running, quoted, pcr) else None
    for i, r in enumerate(records[:-1], start=1):
        running = {a: extend(a, v, r.digests[a]) for a, v in running.items() if a in r.digests}
        if _matches(running, quoted, pcr):
            found = i
    return found
