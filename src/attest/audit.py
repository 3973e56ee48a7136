"""The operator audit log: pseudonymised, hash-chained, anchored in the runtime PCR. Pure.

An entry records who did what on the node, without saying who in clear:

    {seq, time, event, operator, source?, service?, session?, result?, prev_hash, entry_hash}

- ``operator``, ``source`` and ``session`` are *pseudonyms*: a truncated HMAC-SHA256 under a
  node-local key (``op:…``, ``host:…``, ``sess:…``). The same person gets the same pseudonym on
  one node, so sessions can be correlated and counted, but the identity is never stored or
  exported; whoever holds the node's key (root on the node) can test a guess, nobody else can.
  ``service`` and ``result`` are short tokens (``sshd``, ``success``), never free text.
- ``entry_hash = SHA-256(prev_hash || RFC 8785(entry without its hashes))``, with
  ``prev_hash`` of entry 0 all zero: editing or deleting an entry breaks every later link.
- Every entry's hash is *anchored*: the broker extends an ``audit`` runtime event
  ``{audit_seq, entry_hash}`` into the runtime PCR (``attest.runtime``). A verifier holding a
  quote therefore knows the hash of the newest entry, and through the chain all earlier ones:
  deleting, editing or truncating entries is detectable remotely, even by someone with root on
  the node (the PCR cannot be rewound).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.errors import AuditChainError, EventLogFormatError
from attest.manifest.canonical import canonicalize
from attest.runtime import AuditAnchor

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
KEY_SIZE = 32
PSEUDONYM_BYTES = 16  # 128-bit pseudonyms: collisions negligible for any operator population

EVENTS = frozenset(
    {
        "login",
        "logout",
        "session-open",
        "session-close",
        "command",
        "auth",
        "account",
        "password-change",
        "privilege-escalation",
        "console",
    }
)
RESULTS = frozenset({"success", "failure", "denied"})
RAW_FIELDS = frozenset({"event", "user", "source", "service", "session", "result", "time"})
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
_PSEUDONYM = re.compile(r"(op|host|sess):[0-9a-f]{32}\Z")
_MAX_IDENTITY = 1024


# --- entries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: str
    event: str
    operator: str
    source: str | None
    service: str | None
    session: str | None
    result: str | None
    prev_hash: bytes
    entry_hash: bytes

    def body(self) -> dict[str, Any]:
        """The hashed members (everything but the two hashes; absent members omitted)."""
        doc: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "operator": self.operator,
        }
        for key in ("source", "service", "session", "result"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        return doc

    def to_json(self) -> dict[str, Any]:
        hashes = {"prev_hash": self.prev_hash.hex(), "entry_hash": self.entry_hash.hex()}
        return {**self.body(), **hashes}


def entry_hash(prev_hash: bytes, body: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(prev_hash + canonicalize(dict(body))).digest()


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """``<prefix>:`` + the first 128 bits of HMAC-SHA256(key, domain || value), hex. ``kind`` is
    ``op`` (operator), ``host`` (remote host) or ``sess`` (session id)."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"audit key must be {KEY_SIZE} bytes")
    msg = b"attest-audit-v1\x00" + kind.encode() + b"\x00" + value.encode("utf-8", "replace")
    return f"{kind}:{hmac.new(key, msg, hashlib.sha256).digest()[:PSEUDONYM_BYTES].hex()}"


def _field_error(name: str, msg: str) -> EventLogFormatError:
    # Never echo the value: it may be an identity.
    return EventLogFormatError(f"audit event: {name} {msg}")


def _identity(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_IDENTITY:
        raise _field_error(name, f"must be a non-empty string of at most {_MAX_IDENTITY} chars")
    return value


def _token(raw: Mapping[str, Any], name: str, allowed: frozenset[str] | None = None) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise _field_error(name, "must be a short token ([A-Za-z0-9._@+-], at most 64 chars)")
    if allowed is not None and value not in allowed:
        raise _field_error(name, f"must be one of {', '.join(sorted(allowed))}")
    return value


def check_time(value: object) -> str:
    """An ISO 8601 timestamp with a UTC offset, at most 40 characters."""
    if not isinstance(value, str) or len(value) > 40:
        raise _field_error("time", "must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _field_error("time", "is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise _field_error("time", "must carry a UTC offset")
    return value


def new_entry(key: bytes, raw: Mapping[str, Any], *, seq: int, prev_hash: bytes) -> AuditEntry:
    """Build entry ``seq`` from a raw event ``{event, user, source?, service?, session?,
    result?, time}`` (identities in clear, as PAM gives them), pseudonymising the identities.
    Raises ``EventLogFormatError`` (without echoing any value) on a malformed event."""
    if not isinstance(raw, Mapping):
        raise EventLogFormatError("audit event must be a JSON object")
    unknown = set(raw) - RAW_FIELDS
    if unknown:
        names = ", ".join(sorted(str(u)[:32] for u in unknown)[:5])
        raise EventLogFormatError(f"audit event: unknown field(s) {names}")
    event = _token(raw, "event", EVENTS)
    if event is None:
        raise _field_error("event", "is required")
    user = _identity(raw, "user")
    if user is None:
        raise _field_error("user", "is required")
    source = _identity(raw, "source")
    session = _identity(raw, "session")
    body_time = check_time(raw.get("time"))
    if not 0 <= seq < 2**53 or len(prev_hash) != HASH_SIZE:
        raise ValueError("bad sequence number or previous hash")
    partial = AuditEntry(
        seq=seq,
        time=body_time,
        event=event,
        operator=pseudonym(key, "op", user),
        source=pseudonym(key, "host", source) if source is not None else None,
        service=_token(raw, "service"),
        session=pseudonym(key, "sess", session) if session is not None else None,
        result=_token(raw, "result", RESULTS),
        prev_hash=prev_hash,
        entry_hash=b"",
    )
    return _with_hash(partial)


def _with_hash(e: AuditEntry) -> AuditEntry:
    return AuditEntry(
        e.seq,
        e.time,
        e.event,
        e.operator,
        e.source,
        e.service,
        e.session,
        e.result,
        e.prev_hash,
        entry_hash(e.prev_hash, e.body()),
    )


def _hex32(doc: Mapping[str, Any], name: str, where: str) -> bytes:
    v = doc.get(name)
    if not isinstance(v, str) or len(v) != 2 * HASH_SIZE:
        raise EventLogFormatError(f"{where}: {name} must be {HASH_SIZE} bytes of hex")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise EventLogFormatError(f"{where}: {name} is not hex") from None


def parse_entry(doc: Any) -> AuditEntry:
    """Read a stored or exported entry (untrusted: only its shape is checked here; hashes and
    anchors by ``verify_audit_chain``). Raises ``EventLogFormatError``."""
    if not isinstance(doc, Mapping):
        raise EventLogFormatError("audit entry is not an object")
    where = "audit entry"
    allowed = {
        "seq",
        "time",
        "event",
        "operator",
        "source",
        "service",
        "session",
        "result",
        "prev_hash",
        "entry_hash",
    }
    if set(doc) - allowed:
        raise EventLogFormatError(f"{where}: unknown members")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
        raise EventLogFormatError(f"{where}: seq must be a non-negative integer")
    where = f"audit entry {seq}"
    event = _token(doc, "event", EVENTS)
    if event is None:
        raise EventLogFormatError(f"{where}: event missing")
    pseudonyms: dict[str, str | None] = {}
    for name, prefix in (("operator", "op"), ("source", "host"), ("session", "sess")):
        v = doc.get(name)
        if v is None and name != "operator":
            pseudonyms[name] = None
            continue
        if not isinstance(v, str) or not _PSEUDONYM.match(v) or not v.startswith(prefix + ":"):
            # A clear identity (or anything else) in a pseudonym field is refused.
            raise EventLogFormatError(f"{where}: {name} is not a {prefix}: pseudonym")
        pseudonyms[name] = v
    operator = pseudonyms["operator"]
    assert operator is not None
    return AuditEntry(
        seq=seq,
        time=check_time(doc.get("time")),
        event=event,
        operator=operator,
        source=pseudonyms["source"],
        service=_token(doc, "service"),
        session=pseudonyms["session"],
        result=_token(doc, "result", RESULTS),
        prev_hash=_hex32(doc, "prev_hash", where),
        entry_hash=_hex32(doc, "entry_hash", where),
    )


# --- verification ----------------------------------------------------------------------------


def check_chain(
    entries: Sequence[AuditEntry], *, after: AuditEntry | None = None
) -> tuple[AuditEntry, ...]:
    """The chain alone (no anchors): consecutive ``seq``; entry 0 links to the zero hash; each
    ``prev_hash`` is the previous ``entry_hash``; each ``entry_hash`` is recomputed.
    ``after``: an entry already verified that the first of ``entries`` must follow."""
    out: list[AuditEntry] = []
    prev: AuditEntry | None = after
    for e in entries:
        if prev is None:
            if e.seq == 0 and e.prev_hash != ZERO_HASH:
                raise AuditChainError("audit entry 0 does not start the chain (prev_hash ≠ 0)")
        else:
            if e.seq != prev.seq + 1:
                raise AuditChainError(
                    f"audit entry {prev.seq} is followed by {e.seq}: entries were deleted or "
                    f"reordered"
                )
            if not hmac.compare_digest(e.prev_hash, prev.entry_hash):
                raise AuditChainError(
                    f"audit entry {e.seq} does not link to entry {prev.seq}: the chain is broken"
                )
        if not hmac.compare_digest(entry_hash(e.prev_hash, e.body()), e.entry_hash):
            raise AuditChainError(f"audit entry {e.seq} was edited: its hash does not match")
        out.append(e)
        prev = e
    return tuple(out)


def verify_audit_chain(
    entries: Sequence[AuditEntry | Mapping[str, Any]], anchors: Sequence[AuditAnchor]
) -> tuple[AuditEntry, ...]:
    """Verify audit entries against the anchors of a *verified* runtime log
    (``VerifiedRuntimeLog.audit_anchors``). ``entries`` are the consecutive entries from some
    ``seq`` on (all of them from 0 for a full audit); raw mappings are parsed first.

    1. the chain (``check_chain``);
    2. every anchor whose ``audit_seq`` falls in the entries matches that entry's hash
       (an edited entry, even with every later hash recomputed, fails here);
    3. no anchor names an entry past the last one given (the tail was truncated);
    4. the last entry is anchored, and so, through the chain, is every earlier one (an
       appended entry that the broker never anchored fails here).

    Anchors before the first entry given are ignored; the runtime log of a later boot starts
    with a checkpoint anchor of the head it found, so anchors need not start at 0.
    Returns the entries or raises ``AuditChainError`` (``EventLogFormatError`` for entries that
    do not parse)."""
    parsed = tuple(e if isinstance(e, AuditEntry) else parse_entry(e) for e in entries)
    return _check_anchors(check_chain(parsed), anchors)


def verify_audit_chain_from(
    held: Sequence[AuditEntry],
    new_entries: Sequence[AuditEntry | Mapping[str, Any]],
    anchors: Sequence[AuditAnchor],
) -> tuple[AuditEntry, ...]:
    """``verify_audit_chain(held + new_entries, anchors)`` for ``held`` entries that an earlier
    call verified (against anchors that ``anchors`` extends: the same runtime log, later):
    only the new entries are parsed and hashed, linked from the last held entry; the anchor
    checks (each anchor against its entry, truncation, the last entry anchored) run over the
    whole chain, so a later anchor naming an edited held entry still fails."""
    parsed = tuple(e if isinstance(e, AuditEntry) else parse_entry(e) for e in new_entries)
    held = tuple(held)
    chain = held + check_chain(parsed, after=held[-1] if held else None)
    return _check_anchors(chain, anchors)


def _check_anchors(
    chain: tuple[AuditEntry, ...], anchors: Sequence[AuditAnchor]
) -> tuple[AuditEntry, ...]:
    by_seq: dict[int, bytes] = {}
    for a in anchors:
        seen = by_seq.setdefault(a.audit_seq, a.entry_hash)
        if not hmac.compare_digest(seen, a.entry_hash):
            raise AuditChainError(f"audit entry {a.audit_seq} is anchored with two hashes")
    if not chain:
        if by_seq:
            raise AuditChainError(
                f"the runtime log anchors audit entries up to {max(by_seq)} but none were given: "
                f"the audit log was deleted or truncated"
            )
        return chain
    first, last = chain[0].seq, chain[-1].seq
    for seq, digest in sorted(by_seq.items()):
        if seq < first:
            continue
        if seq > last:
            raise AuditChainError(
                f"the runtime log anchors audit entry {seq} but the log ends at {last}: "
                f"the tail was truncated"
            )
        if not hmac.compare_digest(chain[seq - first].entry_hash, digest):
            raise AuditChainError(
                f"audit entry {seq} does not match its anchor in the runtime log: edited"
            )
    if last not in by_seq:
        raise AuditChainError(
            f"audit entries after {max((s for s in by_seq if s <= last), default='none')} are "
            f"not anchored in the runtime log (entry {last} is not): inserted, or not yet "
            f"measured"
        )
    return chain
