"""The verifier's memory of enrolled nodes (an adapter over ``attest.storage.files``).

One JSON file per node under a state directory, named by the sha256 of the node's address (the
URL the operator verifies), written atomically::

    {"version": 1, "address": "https://node-7:8443", "enrollment": {...Enrollment...},
     "last_clock": {"clock_ms", "reset_count", "restart_count", "safe"} | null,
     "last_verdict": "affirming" | ..., "last_appraised_at": RFC 3339 | null,
     "re_enrollments": [{"at", "operator_action", "previous_ak_name", "new_ak_name", ...}]}

A changed AK or EK on a later contact is an alarm (``attest.appraisal``), never a silent
re-enrollment: ``replace`` is called only for an explicit operator action (``attest verify
--re-enroll``) and the replaced identity is kept in ``re_enrollments``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attest.appraisal.memory import Continuity
from attest.enroll import Enrollment
from attest.errors import EvidenceFormatError
from attest.storage.files import atomic_write_bytes, read_optional
from attest.tpmstruct import ClockInfo

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeRecord:
    address: str
    enrollment: Enrollment
    last_clock: ClockInfo | None = None
    last_verdict: str | None = None
    last_appraised_at: str | None = None
    re_enrollments: tuple[Mapping[str, Any], ...] = field(default=())
    # What was verified before (audit head, TPM epoch): kept until an operator re-enrolls.
    continuity: Continuity | None = None

    def to_json(self) -> dict[str, Any]:
        c = self.last_clock
        return {
            "version": RECORD_VERSION,
            "address": self.address,
            "enrollment": self.enrollment.to_json(),
            "last_clock": None
            if c is None
            else {
                "clock_ms": c.clock,
                "reset_count": c.reset_count,
                "restart_count": c.restart_count,
                "safe": c.safe,
            },
            "last_verdict": self.last_verdict,
            "last_appraised_at": self.last_appraised_at,
            "re_enrollments": [dict(r) for r in self.re_enrollments],
            "continuity": None if self.continuity is None else self.continuity.to_json(),
        }

    @classmethod
    def from_json(cls, doc: object) -> NodeRecord:
        if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
            raise EvidenceFormatError("enrollment record is not a version 1 object")
        try:
            c = doc.get("last_clock")
            clock = (
                None
                if c is None
                else ClockInfo(
                    int(c["clock_ms"]),
                    int(c["reset_count"]),
                    int(c["restart_count"]),
                    bool(c["safe"]),
                )
            )
            return cls(
                address=str(doc["address"]),
                enrollment=Enrollment.from_json(doc["enrollment"]),
                last_clock=clock,
                last_verdict=doc.get("last_verdict"),
                last_appraised_at=doc.get("last_appraised_at"),
                re_enrollments=tuple(doc.get("re_enrollments") or ()),
                continuity=None
                if doc.get("continuity") is None
                else Continuity.from_json(doc["continuity"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"enrollment record: {exc}") from None


def record_key(address: str) -> str:
    return hashlib.sha256(address.rstrip("/").encode()).hexdigest()[:32]


class EnrollmentStore:
    """Per-node records in ``directory`` (created 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, address: str) -> Path:
        return self.directory / f"node-{record_key(address)}.json"

    def load(self, address: str) -> NodeRecord | None:
        data = read_optional(self.path(address), max_size=MAX_RECORD_BYTES)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            raise EvidenceFormatError(f"{self.path(address)} is not JSON") from None
        record = NodeRecord.from_json(doc)
        if record.address != address.rstrip("/"):
            raise EvidenceFormatError(f"{self.path(address)} belongs to {record.address}")
        return record

    def save(self, record: NodeRecord) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write_bytes(self.path(record.address), data, mode=0o600)

    def enroll(self, address: str, enrollment: Enrollment) -> NodeRecord:
        """First contact: remember the node. Refuses to overwrite an existing record."""
        if self.load(address) is not None:
            raise RuntimeError(
                f"{address} is already enrolled: re-enrollment is an explicit "
                "operator action (replace)"
            )
        record = NodeRecord(address.rstrip("/"), enrollment)
        self.save(record)
        return record

    def replace(
        self, address: str, enrollment: Enrollment, *, at: str, reason: str = "operator re-enroll"
    ) -> tuple[NodeRecord, dict[str, Any] | None]:
        """Operator action: replace the enrolled identity, keeping what it replaced. Returns
        the new record and the audit entry (``None`` when nothing was enrolled before)."""
        old = self.load(address)
        if old is None:
            return self.enroll(address, enrollment), None
        entry = {
            "at": at,
            "operator_action": reason,
            "previous_node_id": old.enrollment.node_id,
            "previous_ak_name": old.enrollment.ak_name.hex(),
            "previous_ek_sha256": None
            if old.enrollment.ek_sha256 is None
            else old.enrollment.ek_sha256.hex(),
            "previous_enrolled_at": old.enrollment.enrolled_at,
            "new_ak_name": enrollment.ak_name.hex(),
            "new_ek_sha256": None if enrollment.ek_sha256 is None else enrollment.ek_sha256.hex(),
        }
        record = NodeRecord(
            address.rstrip("/"), enrollment, re_enrollments=(*old.re_enrollments, entry)
        )
        self.save(record)
        return record, entry

    def appraised(
        self,
        record: NodeRecord,
        *,
        clock: ClockInfo | None,
        verdict: str,
        at: str,
        continuity: Continuity | None = None,
    ) -> NodeRecord:
        """Remember an appraisal; the clock only from a verified quote (never moves back), the
        continuity the appraisal returned (``None``: keep what was remembered)."""
        new = replace(
            record,
            last_verdict=verdict,
            last_appraised_at=at,
            last_clock=clock if clock is not None else record.last_clock,
            continuity=continuity if continuity is not None else record.continuity,
        )
        self.save(new)
        return new
