"""The operator audit log on disk, anchored in the runtime log (an adapter).

- The pseudonymisation key is 32 random bytes in ``key_path`` (mode 0600), generated on first
  use with an atomic write; a key file readable by group or others is refused.
- ``record(event)`` pseudonymises the event (``attest.audit.new_entry``), appends the entry to
  an append-only JSON-SEQ file and fsyncs it (the write-ahead), *then* anchors it: an ``audit``
  runtime event ``{audit_seq, entry_hash}`` extended into the runtime PCR (the commit).
- A record that fails before its anchor reached the runtime log (the state file system is
  full, the TPM refused the PCR read, the runtime log no longer replays) is rolled back: the
  entry is cut off ``audit.log`` again (truncated to its previous length and fsync'ed), so both
  logs are byte for byte as before and the chain still verifies. The caller gets the error
  (``StorageError`` for a full or failing file system). Once the anchor is in the runtime log
  the entry stays, even if its extend then fails (``TpmError``): the runtime log extends it
  when the TPM answers again.
- On open, and when the runtime log starts afresh after a TPM reset, the log is reconciled with
  its anchors: an entry written but not anchored (a crash between the two steps) is anchored
  now; a new boot's runtime log gets a checkpoint anchor of the current head; an audit log that
  is shorter than its anchors or disagrees with them is refused (``AuditChainError``).
- A clean ``close()`` records an ``audit-close`` runtime event ``{entries, head}``. Entries
  found past the last anchor or close at the next open were written while no broker ran: they
  are reported by an ``audit-unanchored`` runtime event ``{first_seq, last_seq, clean_stop,
  previous_boot}`` *before* they are anchored, so a verifier sees them (``clean_stop``: after a
  clean close no attest process wrote them; without it a crash between the write and the
  anchor leaves the same trace). After a TPM reset the last records of the boot before (the
  file set aside, ``RuntimeLog.previous``) are the reference, with ``previous_boot``.

Identities never reach this module's files or log lines in clear: only pseudonyms are stored,
and the logger prints sequence numbers and event types only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.audit import (
    KEY_SIZE,
    ZERO_HASH,
    AuditEntry,
    check_chain,
    new_entry,
    parse_entry,
)
from attest.errors import (
    AttestError,
    AuditChainError,
    ConfigError,
    EventLogFormatError,
    StorageError,
)
from attest.eventlog.cel import CelRecord
from attest.manifest.canonical import canonicalize
from attest.node.logs.runtime import (
    MAX_LOG_BYTES,
    RuntimeLog,
    drop_torn_tail,
    truncate_back,
    write_all,
)
from attest.runtime import (
    KIND_AUDIT,
    KIND_AUDIT_CLOSE,
    KIND_AUDIT_UNANCHORED,
    AuditAnchor,
    AuditClose,
    parse_content,
)
from attest.storage.files import atomic_write_bytes, fsync_dir, read_bytes

logger = logging.getLogger(__name__)

RS = b"\x1e"


def load_or_create_key(key_path: str | os.PathLike[str]) -> bytes:
    """The node-local pseudonymisation key; created (0600, atomically) when missing."""
    path = Path(key_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        atomic_write_bytes(path, secrets.token_bytes(KEY_SIZE), mode=0o600)
        logger.info("created a new audit pseudonymisation key at %s", path)
        st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"{path} is readable or writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); it must be 0600",
            key="audit_key",
        )
    key = read_bytes(path, max_size=KEY_SIZE + 1)
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{path} holds {len(key)} bytes, not {KEY_SIZE}", key="audit_key")
    return key


def _audit_state(
    records: tuple[CelRecord, ...],
) -> tuple[list[AuditAnchor], AuditAnchor | AuditClose | None]:
    """The audit anchors of a runtime log, and its last anchor or clean close (None: neither)."""
    anchors: list[AuditAnchor] = []
    last: AuditAnchor | AuditClose | None = None
    for r in records:
        if r.content_type == "attest/" + KIND_AUDIT:
            a = parse_content(KIND_AUDIT, r.content)
            assert isinstance(a, AuditAnchor)
            anchors.append(a)
            last = a
        elif r.content_type == "attest/" + KIND_AUDIT_CLOSE:
            c = parse_content(KIND_AUDIT_CLOSE, r.content)
            assert isinstance(c, AuditClose)
            last = c
    return anchors, last


def _loads(data: bytes) -> tuple[AuditEntry, ...]:
    out: list[AuditEntry] = []
    for n, chunk in enumerate(data.split(RS)):
        if not chunk.strip():
            continue
        try:
            doc = json.loads(chunk)
        except (ValueError, RecursionError):
            raise EventLogFormatError(f"audit log line {n} is not JSON") from None
        out.append(parse_entry(doc))
    return tuple(out)


class AuditLog:
    """The audit log at ``path``, pseudonymised with the key at ``key_path``, anchored in
    ``runtime``. Thread-safe: it shares ``runtime.lock``, so an entry and its anchor are
    written in one critical section."""

    def __init__(
        self, path: str | os.PathLike[str], key_path: str | os.PathLike[str], runtime: RuntimeLog
    ) -> None:
        self.path = Path(path)
        self._runtime = runtime
        self._lock = runtime.lock
        self._key = load_or_create_key(key_path)
        self._fd = -1
        self.storage_failures = 0  # entries refused because the file could not be written
        with self._lock:
            data = b""
            with contextlib.suppress(FileNotFoundError):
                data = read_bytes(self.path, max_size=MAX_LOG_BYTES)
            data = drop_torn_tail(self.path, data)
            self._entries = list(check_chain(_loads(data)))
            if self._entries and self._entries[0].seq != 0:
                raise AuditChainError(f"{self.path} does not start at entry 0")
            existed = self.path.exists()
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            if not existed:
                fsync_dir(self.path.parent)
            self._reconcile()
            runtime.add_reset_hook(self._checkpoint)

    # --- anchoring --------------------------------------------------------------------------

    def _anchors(self) -> list[AuditAnchor]:
        return _audit_state(self._runtime.records())[0]

    def _head(self) -> bytes:
        return self._entries[-1].entry_hash if self._entries else ZERO_HASH

    def _continues(self, last: AuditAnchor | AuditClose) -> bool:
        """Whether the entries still hold what ``last`` recorded (and how many it covers)."""
        n = last.entries if isinstance(last, AuditClose) else last.audit_seq + 1
        if n > len(self._entries):
            return False
        return n == 0 or self._entries[n - 1].entry_hash == (
            last.head if isinstance(last, AuditClose) else last.entry_hash
        )

    def _anchor(self, entry: AuditEntry) -> None:
        self._runtime.measure(
            KIND_AUDIT, {"audit_seq": entry.seq, "entry_hash": entry.entry_hash.hex()}
        )

    def _checkpoint(self) -> None:
        """A fresh runtime log (new boot): anchor the head, which commits to every entry."""
        if self._entries:
            logger.info(
                "audit log: anchoring head entry %d in the new runtime log", self._entries[-1].seq
            )
            self._anchor(self._entries[-1])

    def _reconcile(self) -> None:
        anchors, last = _audit_state(self._runtime.records())
        n = len(self._entries)
        for a in anchors:
            if a.audit_seq >= n:
                raise AuditChainError(
                    f"{self.path} has {n} entries but the runtime log anchors entry "
                    f"{a.audit_seq}: the audit log was truncated or replaced"
                )
            if self._entries[a.audit_seq].entry_hash != a.entry_hash:
                raise AuditChainError(
                    f"{self.path}: entry {a.audit_seq} does not match its anchor: edited"
                )
        if isinstance(last, AuditClose) and not self._continues(last):
            raise AuditChainError(
                f"{self.path} has {n} entries but was closed with {last.entries}: the audit "
                "log was truncated or replaced"
            )
        pending = self._unanchored(last)
        if not n:
            return
        if not anchors:
            self._checkpoint()
            return
        for e in pending:
            self._anchor(e)

    def _unanchored(self, last: AuditAnchor | AuditClose | None) -> list[AuditEntry]:
        """The entries past what the runtime log last recorded of the audit log (this boot's,
        else the boot's before a TPM reset), reported in the runtime log before they are
        anchored: they were written while no broker ran."""
        previous_boot = last is None and bool(self._runtime.previous)
        if previous_boot:
            last = _audit_state(self._runtime.previous)[1]
            if last is not None and not self._continues(last):
                logger.warning(
                    "audit log: %s does not continue the log of the boot before the TPM reset",
                    self.path,
                )
                return []
        if last is None:
            return []
        done = last.entries if isinstance(last, AuditClose) else last.audit_seq + 1
        pending = self._entries[done:]
        if not pending:
            return []
        clean = isinstance(last, AuditClose)
        (logger.error if clean else logger.warning)(
            "audit log: entries %d..%d were written while attestd-tpm was not running (%s); "
            "recorded as audit-unanchored, then anchored",
            pending[0].seq,
            pending[-1].seq,
            "after its clean stop: not by attest" if clean else "no clean stop: a crash?",
        )
        self._runtime.measure(
            KIND_AUDIT_UNANCHORED,
            {
                "first_seq": pending[0].seq,
                "last_seq": pending[-1].seq,
                "clean_stop": clean,
                "previous_boot": previous_boot,
            },
        )
        return pending

    # --- the operations ---------------------------------------------------------------------

    def record(self, event: Mapping[str, Any], *, now: datetime | None = None) -> AuditEntry:
        """Record a raw event (``attest.audit.new_entry``; ``time`` defaults to ``now``, UTC)
        and anchor it. Returns the stored (pseudonymised) entry. On failure nothing was
        recorded (module docstring), unless the anchor was written and only its extend failed."""
        raw = dict(event)
        if raw.get("time") is None:
            raw["time"] = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        with self._lock:
            if self._fd < 0:
                raise RuntimeError("audit log used after close()")
            prev = self._entries[-1].entry_hash if self._entries else ZERO_HASH
            entry = new_entry(self._key, raw, seq=len(self._entries), prev_hash=prev)
            line = RS + canonicalize(entry.to_json()) + b"\n"
            size = os.fstat(self._fd).st_size
            try:
                write_all(self._fd, line)
            except OSError as exc:
                truncate_back(self._fd, size, self.path)
                self.storage_failures += 1
                raise StorageError(
                    f"audit entry not recorded: cannot write {self.path} "
                    f"({exc.strerror or exc}); the audit log is as before"
                ) from exc
            except BaseException:
                truncate_back(self._fd, size, self.path)
                raise
            self._entries.append(entry)
            try:
                self._anchor_pending()
            except BaseException:
                if not self._anchored(entry):
                    self._roll_back(entry, size)
                raise
            logger.info("audit entry %d recorded: %s", entry.seq, entry.event)
            return entry

    def _anchored(self, entry: AuditEntry) -> bool:
        """Whether the runtime log holds an anchor of ``entry`` (written, maybe not extended)."""
        for r in self._runtime.held():
            if r.content_type == "attest/" + KIND_AUDIT:
                a = parse_content(KIND_AUDIT, r.content)
                if isinstance(a, AuditAnchor) and a.audit_seq == entry.seq:
                    return True
        return False

    def _roll_back(self, entry: AuditEntry, size: int) -> None:
        """Undo the write-ahead of ``entry``, whose anchor never reached the runtime log."""
        if not truncate_back(self._fd, size, self.path):
            return  # the entry stays in the file: it is anchored at the next record or start
        self._entries.pop()
        logger.warning(
            "audit entry %d not anchored (the runtime log could not take its anchor): rolled "
            "back, %s is as before",
            entry.seq,
            self.path,
        )

    def _anchor_pending(self) -> None:
        anchors = self._anchors()
        if not anchors:
            # A fresh runtime log without its checkpoint: the head commits to every entry.
            self._anchor(self._entries[-1])
            return
        for e in self._entries[anchors[-1].audit_seq + 1 :]:
            self._anchor(e)

    def entries(self, start: int = 0) -> tuple[AuditEntry, ...]:
        with self._lock:
            return tuple(self._entries[max(start, 0) :])

    def _mark_closed(self) -> None:
        """A clean stop: record the entries the log holds (``audit-close``), unless the runtime
        log says so already. Best effort: without it the next start sees an unclean stop."""
        _, last = _audit_state(self._runtime.held())
        n, head = len(self._entries), self._head()
        if isinstance(last, AuditClose) and (last.entries, last.head) == (n, head):
            return
        try:
            if self._entries:
                self._anchor_pending()  # an entry whose anchor failed earlier
            self._runtime.measure(KIND_AUDIT_CLOSE, {"entries": n, "head": head.hex()})
        except (AttestError, OSError, RuntimeError) as exc:
            logger.warning("audit log: its clean close is not recorded (%s)", exc)

    def close(self) -> None:
        """Close the file after recording the clean stop (``_mark_closed``)."""
        with self._lock:
            if self._fd >= 0:
                self._mark_closed()
                os.close(self._fd)
                self._fd = -1
