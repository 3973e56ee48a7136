"""Rollout shares and embargo clocks (pure: nodes, registry, marks and ``now`` in; a report out).

A node *runs* a release when its latest appraisal found its authenticated dm-verity root hash
in the registry as that release (``NodeRow.release``). The share is over every registered node:
an unreachable or failing node is not counted as running anything, so "the whole fleet runs
it" means every node proved it.

Embargoed releases: the quiet period starts when the whole fleet runs the release. The signed
registry's ``fleet_complete_at`` (set by governance with ``attest manifest fleet-complete``) is
authoritative; until it is set, the moment this service first *observed* a complete fleet is
recorded (``fleet_releases``) and the clock shown from it, marked as observed, with the command
to record it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from attest.manifest import VerifiedRegistry
from attest.manifest.evaluate import EmbargoState
from attest.manifest.model import format_time
from attest.verifier.fleet.model import NodeRow


@dataclass(frozen=True, slots=True)
class ReleaseRollout:
    version: str
    sequence: int | None
    running: int
    total: int
    revoked: bool
    embargo: EmbargoState
    quiet_period_days: int | None
    fleet_complete_at: datetime | None
    fleet_complete_source: str | None  # "registry" | "observed"
    disclosure_due: datetime | None
    note: str

    @property
    def share(self) -> float:
        return self.running / self.total if self.total else 0.0

    @property
    def overdue(self) -> bool:
        return self.embargo is EmbargoState.OVERDUE

    def to_json(self) -> dict[str, Any]:
        def t(v: datetime | None) -> str | None:
            return None if v is None else format_time(v)

        return {
            "version": self.version,
            "sequence": self.sequence,
            "running": self.running,
            "total": self.total,
            "share": round(self.share, 6),
            "revoked": self.revoked,
            "embargo": self.embargo.value,
            "quiet_period_days": self.quiet_period_days,
            "fleet_complete_at": t(self.fleet_complete_at),
            "fleet_complete_source": self.fleet_complete_source,
            "disclosure_due": t(self.disclosure_due),
            "overdue": self.overdue,
            "note": self.note,
        }


def rollout(
    nodes: Sequence[NodeRow],
    registry: VerifiedRegistry | None,
    marks: Mapping[str, float],
    *,
    now: datetime,
) -> list[ReleaseRollout]:
    total = len(nodes)
    running: dict[str, int] = {}
    for n in nodes:
        if n.release is not None:
            running[n.release] = running.get(n.release, 0) + 1
    out: list[ReleaseRollout] = []
    snap = registry.snapshot if registry is not None else None
    releases = dict(snap.releases) if snap is not None else {}
    revoked = set(snap.revocations) if snap is not None else set()
    for version in sorted(
        set(releases) | set(running),
        key=lambda v: (releases[v].sequence if v in releases else -1, v),
    ):
        rel = releases.get(version)
        count = running.get(version, 0)
        e = rel.embargo if rel is not None else None
        if e is None:
            out.append(
                ReleaseRollout(
                    version,
                    rel.sequence if rel else None,
                    count,
                    total,
                    version in revoked,
                    EmbargoState.NONE,
                    None,
                    None,
                    None,
                    None,
                    "" if rel else "not in the trusted registry",
                )
            )
            continue
        at, source = e.fleet_complete_at, "registry" if e.fleet_complete_at else None
        note = ""
        if at is None and version in marks:
            at, source = datetime.fromtimestamp(marks[version], UTC), "observed"
            note = (
                f"the whole fleet was first seen running it at {format_time(at)}; record it "
                f"with: attest manifest fleet-complete {version} --at {format_time(at)}"
            )
        due = None if at is None else at + timedelta(days=e.quiet_period_days)
        if e.disclosed_at is not None:
            state = EmbargoState.DISCLOSED
        elif due is None:
            state = EmbargoState.AWAITING_FLEET
            note = f"quiet period starts when all {total} nodes run it ({count} do)"
        else:
            state = EmbargoState.OVERDUE if now > due else EmbargoState.QUIET_PERIOD
        out.append(
            ReleaseRollout(
                version,
                rel.sequence if rel else None,
                count,
                total,
                version in revoked,
                state,
                e.quiet_period_days,
                at,
                source,
                due,
                note,
            )
        )
    return out


def completed_embargoes(report: Sequence[ReleaseRollout]) -> list[str]:
    """Embargoed releases the whole fleet now runs whose clock has not started anywhere."""
    return [
        r.version
        for r in report
        if r.embargo is EmbargoState.AWAITING_FLEET and r.total > 0 and r.running == r.total
    ]
