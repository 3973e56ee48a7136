"""What a verifier remembers about a node between two appraisals (``appraise_incremental``),
and the firmware replays it shares between nodes. Pure: immutable values and a memo of pure
functions; nothing here changes a result, only how much of it is recomputed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from attest.audit import AuditEntry
from attest.errors import EvidenceFormatError
from attest.eventlog.facts import BootFacts, facts
from attest.eventlog.parse import UnverifiedEventLog, parse_event_log
from attest.eventlog.replay import VerifiedEventLog, replay
from attest.model import PcrValues
from attest.runtime import RuntimeReplay
from attest.tpmstruct import Public

FirmwareKey = tuple[tuple[int, tuple[tuple[int, bytes | None], ...]], ...]


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The newest operator audit entry a verifier verified: its sequence number and hash."""

    seq: int
    entry_hash: bytes


@dataclass(frozen=True, slots=True)
class Continuity:
    """What a verifier must remember of a node so that history deleted by the node's root
    cannot go unnoticed (``attest.appraisal.history``): kept for the life of the enrollment,
    across TPM resets, in the verifier's store (``attest verify``'s enrollment file, the
    fleet's database). ``None`` where nothing was verified yet.

    - ``audit_head``: the newest audit entry verified (any TPM epoch): the node's chain must
      still contain it;
    - ``reset_count``: the TPM resetCount of the last verified quote (a change is a reset,
      reported);
    - ``runtime_seen``: a runtime log was verified in that reset epoch: withholding it now is
      a choice the node made.
    """

    audit_head: AuditHead | None = None
    reset_count: int | None = None
    runtime_seen: bool = False

    def to_json(self) -> dict[str, Any]:
        head = self.audit_head
        return {
            "audit_head": None
            if head is None
            else {"seq": head.seq, "entry_hash": head.entry_hash.hex()},
            "reset_count": self.reset_count,
            "runtime_seen": self.runtime_seen,
        }

    @classmethod
    def from_json(cls, doc: object) -> Continuity:
        """The stored form back; ``EvidenceFormatError`` for anything else (a store is data)."""
        try:
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            head = doc["audit_head"]
            seq = None if head is None else head["seq"]
            if head is not None and (type(seq) is not int or not 0 <= seq < 2**63):
                raise ValueError("audit_head.seq")
            digest = None if head is None else bytes.fromhex(head["entry_hash"])
            if digest is not None and len(digest) != 32:
                raise ValueError("audit_head.entry_hash")
            reset = doc["reset_count"]
            if reset is not None and (type(reset) is not int or not 0 <= reset < 2**32):
                raise ValueError("reset_count")
            if type(doc["runtime_seen"]) is not bool:
                raise ValueError("runtime_seen")
            return cls(
                None if seq is None or digest is None else AuditHead(seq, digest),
                reset,
                doc["runtime_seen"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceFormatError(f"continuity record: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """What a verifier keeps about one node between two appraisals so that the next one fetches
    and checks only what is new (``appraise_incremental``). Immutable: each appraisal returns
    the next memory. ``NodeMemory()`` holds nothing: the appraisal is a full one.

    Everything held was verified against a quote of the TPM reset epoch ``epoch``
    (resetCount, restartCount); a quote of another epoch makes it all void.

    - the AK, parsed (its ``cryptography`` key built once);
    - the firmware event log: its size in bytes, the parsed log and -- when it replayed -- the
      verified replay with its boot facts, for the quoted values it was verified against
      (``firmware_key``: the quoted PCRs 0-7 and the PCRs the log has events for);
    - the runtime log: the verified records and the running runtime PCR value per bank;
    - the operator audit entries verified against the runtime log's anchors.
    """

    ak_public: bytes = b""
    ak: Public | None = None
    epoch: tuple[int, int] | None = None
    firmware_size: int = 0
    firmware_digest: bytes = b""  # SHA-256 of the firmware log's bytes
    firmware_log: UnverifiedEventLog | None = None
    firmware_pcrs: frozenset[int] = frozenset()  # the PCRs the log has events for
    firmware_key: FirmwareKey | None = None
    firmware: VerifiedEventLog | None = None
    boot: BootFacts | None = None
    runtime: RuntimeReplay | None = None
    audit: tuple[AuditEntry, ...] = ()

    @property
    def holds_logs(self) -> bool:
        return self.firmware_log is not None or self.runtime is not None or bool(self.audit)

    @property
    def runtime_next(self) -> int:
        return 0 if self.runtime is None else self.runtime.next_recnum

    @property
    def audit_next(self) -> int:
        """The ``start`` for ``GET /v1/audit``: the seq after the last entry held."""
        return self.audit[-1].seq + 1 if self.audit else 0

    def log_request(self) -> dict[str, dict[str, int]]:
        """The ``logs`` member of the next ``POST /v1/evidence``: each log from where the
        held part ends (docs/api.md: the firmware log from a byte offset, the runtime log from a
        record number)."""
        return {"firmware": {"start": self.firmware_size}, "runtime": {"start": self.runtime_next}}

    def forget_logs(self) -> NodeMemory:
        return NodeMemory(ak_public=self.ak_public, ak=self.ak)

    def holding(
        self,
        firmware: HeldFirmware | None,
        runtime: RuntimeReplay | None,
        audit: tuple[AuditEntry, ...],
    ) -> NodeMemory:
        """The next memory: this one's AK and epoch, and what this appraisal verified."""
        if firmware is None:
            return NodeMemory(self.ak_public, self.ak, self.epoch, runtime=runtime, audit=audit)
        return NodeMemory(
            self.ak_public,
            self.ak,
            self.epoch,
            firmware_size=firmware.size,
            firmware_digest=firmware.digest,
            firmware_log=firmware.log,
            firmware_pcrs=firmware.pcrs,
            firmware_key=firmware.key,
            firmware=firmware.verified,
            boot=firmware.boot,
            runtime=runtime,
            audit=audit,
        )


@dataclass(frozen=True, slots=True)
class HeldFirmware:
    """A firmware event log that replayed, as the next ``NodeMemory`` holds it."""

    size: int  # its size in bytes
    digest: bytes  # SHA-256 of its bytes (b"" when no FirmwareReplayCache computed it)
    log: UnverifiedEventLog
    pcrs: frozenset[int]  # the PCRs it has events for
    key: FirmwareKey  # the quoted values its replay read
    verified: VerifiedEventLog
    boot: BootFacts | None


class FirmwareReplayCache:
    """Firmware event logs and their verified replays, shared by every node one verifier
    appraises: nodes of one platform and firmware version serve byte-identical logs, so the
    log is parsed once and replayed once per set of quoted values it reads. A memo of pure
    functions -- ``parse_event_log(data)`` keyed by the data's SHA-256, ``replay`` + ``facts``
    keyed by (that digest, ``firmware_key``) -- so it never changes a result; only successes
    are kept; at most ``size`` entries of each (the oldest go first)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._logs: dict[bytes, UnverifiedEventLog] = {}
        self._replays: dict[tuple[bytes, FirmwareKey], tuple[VerifiedEventLog, BootFacts]] = {}
        self.hits = 0
        self.misses = 0

    def parsed(self, data: bytes) -> tuple[bytes, UnverifiedEventLog]:
        digest = hashlib.sha256(data).digest()
        log = self._logs.get(digest)
        if log is None:
            log = parse_event_log(data)
            self._put(self._logs, digest, log)
        return digest, log

    def replayed(
        self, digest: bytes, log: UnverifiedEventLog, quoted: PcrValues, key: FirmwareKey
    ) -> tuple[VerifiedEventLog, BootFacts]:
        found = self._replays.get((digest, key))
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        fw = replay(log, quoted)
        found = (fw, facts(fw))
        self._put(self._replays, (digest, key), found)
        return found

    def _put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        if len(table) >= self.size:
            del table[next(iter(table))]
        table[key] = value


def firmware_key(logged: frozenset[int], quoted: PcrValues) -> FirmwareKey:
    """What ``replay(log, quoted)`` reads of ``quoted``: per bank, the selected PCRs, with the
    values of PCRs 0-7 and of the PCRs the log has events for (``logged``; the others only by
    number: they are reported as unlogged)."""
    return tuple(
        (
            int(alg),
            tuple(
                (pcr, v if pcr <= 7 or pcr in logged else None) for pcr, v in sorted(values.items())
            ),
        )
        for alg, values in sorted(quoted.values.items())
    )
