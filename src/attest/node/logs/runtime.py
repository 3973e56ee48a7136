"""The runtime measurement log on disk, kept in step with the runtime PCR (an adapter).

An append-only JSON-SEQ file (RFC 7464; one CEL record a line, like systemd's
tpm2-measure.log) and one PCR. For crash safety every measurement is

1. appended to the file and fsync'ed, *then*
2. extended into the PCR.

A crash can therefore leave at most one record in the file that is not in the PCR, never the
other way round. On open (and after any failed extend) the log is reconciled with the TPM:

- the file replays to the PCR: nothing to do;
- the PCR is all zero and the file is not empty: the TPM was reset (a reboot, or a simulator
  restart): the old file is kept, renamed ``<name>.reset-<UTC time>``, and a fresh log starts
  (checked before the next case, which a one-record log would also match);
- the file minus its last record replays to the PCR: the last extend was lost, extend it now;
- anything else: refuse to measure (``ReplayError`` naming the bank and PCR). Someone else
  extended the PCR, or the file was edited, truncated or deleted; see docs/runtime-log.md for
  recovery. The records are still served as recorded (``records``): the node does not hide a
  tamper, the verifier sees the log not replaying into the quoted PCR and contraindicates.

A torn last line (a crash in the middle of step 1) was never extended and is dropped.

A failed write (no space left on the state file system, an I/O error) is cut off again and
fsync'ed before the error is raised, as ``StorageError``: the file and the PCR are as before
(``storage_failures`` counts them, for the broker's ``state_fs`` report).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.errors import EventLogFormatError, ReplayError, StorageError, TpmError
from attest.eventlog.cel import RS, CelRecord, dumps_cel_record, loads_cel
from attest.model import HashAlg, PcrSelection, PcrValues, extend
from attest.node.tpm.port import TpmPort
from attest.runtime import DEFAULT_RUNTIME_PCR, check_records, new_runtime_record
from attest.storage.files import fsync_dir, read_bytes

logger = logging.getLogger(__name__)

MAX_LOG_BYTES = 256 * 1024 * 1024


def drop_torn_tail(path: Path, data: bytes) -> bytes:
    """Cut a final record that was not completely written (no trailing newline)."""
    if not data or data.endswith(b"\n"):
        return data
    keep = data.rfind(b"\n") + 1
    logger.warning(
        "dropping a torn record at the end of %s (%d bytes, never extended)",
        path,
        len(data) - keep,
    )
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return data[:keep]


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` at the end of ``fd`` (opened ``O_APPEND``) and fsync it; ``OSError`` on a
    short write too (a file system that filled up in the middle of it)."""
    if os.write(fd, data) != len(data):
        # The kernel writes what fits and returns the count: the file system filled up.
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
    os.fsync(fd)


def truncate_back(fd: int, size: int, path: Path) -> bool:
    """Cut ``fd`` back to ``size`` bytes and fsync it (shrinking needs no free space). Logged,
    not raised, if even that fails (returns False): the caller's error is the one to report,
    and a torn or unanchored tail is repaired when the log is opened again."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        logger.error("cannot cut %s back to %d bytes after a failed write: %s", path, size, exc)
        return False
    return True


class RuntimeLog:
    """The runtime log at ``path``, extended into ``pcr`` of ``tpm`` in ``banks`` (default: all
    active banks). Thread-safe (``lock`` is re-entrant and may be shared by logs that anchor
    into this one, such as ``attest.node.logs.audit.AuditLog``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        tpm: TpmPort,
        *,
        pcr: int = DEFAULT_RUNTIME_PCR,
        banks: Sequence[HashAlg] | None = None,
    ) -> None:
        if not 0 <= pcr < 24:
            raise ValueError(f"runtime PCR {pcr} out of range 0..23")
        self.path = Path(path)
        self.pcr = pcr
        self.lock = threading.RLock()
        self._tpm = tpm
        self._banks = tuple(banks) if banks is not None else tuple(tpm.banks())
        if not self._banks:
            raise ValueError("no PCR bank to extend")
        self._records: list[CelRecord] = []
        self._expected: dict[HashAlg, bytes] = {}
        self._fd = -1
        self._reset_hooks: list[Callable[[], object]] = []
        self.rotated: list[Path] = []  # files set aside after a TPM reset, oldest first
        # The records of the last file set aside (the boot before the reset), as they were.
        self.previous: tuple[CelRecord, ...] = ()
        self.storage_failures = 0  # records refused because the file could not be written
        with self.lock:
            self._load()
            self._reconcile()

    @property
    def banks(self) -> tuple[HashAlg, ...]:
        return self._banks

    # --- file -------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = read_bytes(self.path, max_size=MAX_LOG_BYTES)
        except FileNotFoundError:
            data = b""
        data = drop_torn_tail(self.path, data)
        records = loads_cel(data) if data.strip(RS.encode() + b"\n ") else ()
        check_records(records, pcr=self.pcr)  # our own file: numbering, kinds, authenticity
        self._records = list(records)
        self._expected = self._replay(self._records)
        self._open()

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not existed:
            fsync_dir(self.path.parent)

    def _append(self, record: CelRecord) -> None:
        line = dumps_cel_record(record).encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, line)
        except OSError as exc:
            # Leave no partial record behind; the PCR was not touched.
            truncate_back(self._fd, size, self.path)
            self.storage_failures += 1
            raise StorageError(
                f"runtime event not recorded: cannot write {self.path} ({exc.strerror or exc}); "
                f"the log is as before"
            ) from exc
        except BaseException:
            truncate_back(self._fd, size, self.path)
            raise

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- PCR --------------------------------------------------------------------------------

    def _replay(self, records: Sequence[CelRecord]) -> dict[HashAlg, bytes]:
        values = {alg: bytes(alg.digest_size) for alg in self._banks}
        for r in records:
            for alg in self._banks:
                d = r.digests.get(alg)
                if d is None:
                    raise EventLogFormatError(
                        f"{self.path}: record {r.recnum} has no {alg.bank_name} digest"
                    )
                values[alg] = extend(alg, values[alg], d)
        return values

    def _read_pcr(self) -> dict[HashAlg, bytes]:
        sel = PcrSelection.of({alg: [self.pcr] for alg in self._banks})
        got: PcrValues = self._tpm.read_pcrs(sel)
        return {alg: got.get(alg, self.pcr) for alg in self._banks}

    def _reconcile(self) -> None:
        current = self._read_pcr()
        if current == self._expected:
            return
        if self._records and all(v == bytes(len(v)) for v in current.values()):
            # Checked first: with one record, "lost extend" would also match a zero PCR, and
            # a record of the previous boot must not be replayed into this one.
            self._rotate()
            return
        if self._records and current == self._replay(self._records[:-1]):
            last = self._records[-1]
            logger.warning(
                "runtime log: record %d was written but not extended into PCR %d "
                "(crash or TPM failure); extending it now",
                last.recnum,
                self.pcr,
            )
            self._tpm.extend(self.pcr, {a: last.digests[a] for a in self._banks})
            return
        bad = [(a.bank_name, self.pcr) for a in self._banks if current[a] != self._expected[a]]
        raise ReplayError(
            f"runtime log {self.path} ({len(self._records)} records) does not replay into PCR "
            f"{self.pcr} ({', '.join(f'{b}:{p}' for b, p in bad)}): the PCR was extended by "
            f"someone else or the log was edited, truncated or removed. Refusing to continue; "
            f"see docs/runtime-log.md (recovery)",
            invalid_pcrs=bad,
        )

    def _rotate(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.reset-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.reset-{stamp}-{n}")
        logger.warning(
            "runtime PCR %d is zero but the log has %d records: the TPM was reset; keeping the "
            "old log as %s and starting a new one",
            self.pcr,
            len(self._records),
            target,
        )
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.replace(self.path, target)
        fsync_dir(self.path.parent)
        self.rotated.append(target)
        self.previous = tuple(self._records)
        self._records = []
        self._expected = self._replay(())
        self._open()
        for hook in list(self._reset_hooks):
            hook()

    def add_reset_hook(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` (holding ``lock``) after a TPM reset started a fresh log, so that
        state that outlives a boot (the audit log head, the daemon start) is measured again."""
        with self.lock:
            self._reset_hooks.append(hook)

    # --- the operations ---------------------------------------------------------------------

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        """Append an event and extend it into the runtime PCR; return its record. Raises
        ``EventLogFormatError`` for content that does not fit its kind (nothing is written) and
        ``TpmError`` when the TPM fails (the record may then already be in the file: it is
        extended when the TPM is back, see the module docstring)."""
        with self.lock:
            if self._fd < 0:
                raise RuntimeError("runtime log used after close()")
            # Read the PCR every time: it also catches a TPM reset (a restarted simulator)
            # that happened while we were running, before we extend onto a zero PCR.
            self._reconcile()
            record = new_runtime_record(
                len(self._records), kind, content, pcr=self.pcr, banks=self._banks
            )
            self._append(record)
            self._records.append(record)
            self._expected = {
                a: extend(a, self._expected[a], record.digests[a]) for a in self._banks
            }
            self._tpm.extend(self.pcr, {a: record.digests[a] for a in self._banks})
            logger.info("runtime event %d measured into PCR %d: %s", record.recnum, self.pcr, kind)
            return record

    def held(self) -> tuple[CelRecord, ...]:
        """The records as written to the file, without comparing with the TPM."""
        with self.lock:
            return tuple(self._records)

    def records(self, start: int = 0) -> tuple[CelRecord, ...]:
        """The records with ``recnum >= start`` of the current log (this boot's), as recorded.

        Served even when they no longer replay into the PCR (``ReplayError`` from the
        reconciliation: someone else extended it): the quote shows the PCR as it is and the
        verifier decides (contraindicated, the PCR named). Only ``measure`` refuses then."""
        with self.lock:
            if self._fd >= 0:
                try:
                    self._reconcile()
                except TpmError as exc:  # the file is still the log; the quote will fail
                    logger.warning("runtime log: cannot compare with the TPM: %s", exc)
                except ReplayError as exc:
                    logger.error("runtime log served as recorded, but %s", exc)
            return tuple(self._records[max(start, 0) :])
