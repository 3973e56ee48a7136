"""What the fleet knows of one registered node, as the store returns it. Pure (no SQL)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from attest.appraisal.claims import Tier


class NodeStatus(enum.StrEnum):
    """The fleet's verdict of a node, most severe first: the EAR status of its latest appraisal
    (``Tier``'s labels: contraindicated, warning, none, affirming), or what the fleet says
    without one: ``unreachable`` (the node stopped answering) and ``unenrolled`` (registered,
    no AK trusted yet). ``STALE`` is a display state only (``Freshness``): the stored verdict is
    kept, but it is not current; it is never stored. The values are the JSON and the database's
    strings."""

    CONTRAINDICATED = "contraindicated"
    UNREACHABLE = "unreachable"
    WARNING = "warning"
    NONE = "none"
    UNENROLLED = "unenrolled"
    AFFIRMING = "affirming"
    STALE = "stale"

    @classmethod
    def of_tier(cls, tier: Tier) -> NodeStatus:
        """The verdict an appraisal whose EAR status is ``tier`` leaves on the node."""
        return cls(tier.label)


# The stored verdicts, most severe first (pages and metrics).
SEVERITY: dict[NodeStatus, int] = {
    s: rank for rank, s in enumerate(NodeStatus) if s is not NodeStatus.STALE
}
# Where pages place a state: a stale node right after the unreachable ones; an unknown one last.
_RANK: dict[str, float] = {s.value: r for s, r in [*SEVERITY.items(), (NodeStatus.STALE, 1.5)]}


def rank(state: str) -> float:
    """A state's place on the pages, most severe first."""
    return _RANK.get(state, 9)


def iso(t: float | None) -> str | None:
    """POSIX seconds -> ISO 8601 UTC (the store's times at the edges)."""
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: str
    url: str
    enrolled: bool
    added_at: float
    next_due: float
    verdict: NodeStatus  # never STALE
    explanation: str
    first_divergence: str | None
    release: str | None
    last_appraised: float | None
    last_seen: float | None
    last_error: str
    failures: int
    appraisals: int
    ear: str | None = None  # the latest signed EAR (None when not read, or none yet)
    host_url: str | None = None  # a host + guest pair: the host's API (url is the guest's)
    layers: dict[str, Any] | None = None  # a pair: {failed_layer, vouch, host: {..}, guest: {..}}
    # The enrollment's strength: ek-chain+activated | activated | tofu (a pair: its weaker
    # layer's); None when not enrolled.
    enrollment: str | None = None

    @property
    def pair(self) -> bool:
        return self.host_url is not None

    def to_json(self, *, ear: bool = True) -> dict[str, Any]:
        doc = {
            "node_id": self.node_id,
            "url": self.url,
            "enrolled": self.enrolled,
            "added_at": self.added_at,
            "next_due": self.next_due,
            "verdict": self.verdict,
            "enrollment_strength": self.enrollment,  # as `attest verify --json` says it
            "explanation": self.explanation,
            "first_divergence": self.first_divergence,
            "release": self.release,
            "last_appraised": self.last_appraised,
            "last_seen": self.last_seen,
            "last_error": self.last_error,
            "failures": self.failures,
            "appraisals": self.appraisals,
            "kind": "pair" if self.pair else "node",
        }
        if self.pair:
            doc["host_url"] = self.host_url
            doc["layers"] = self.layers
        if ear:
            doc["ear"] = self.ear
        return doc


DEFAULT_STALE_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class Freshness:
    """When a verdict stops being current: a node that is due but has not been appraised for
    ``intervals`` polling intervals is shown ``stale`` (the verifier stopped, or its database
    is unreachable). A node in its retry backoff is not stale: it is on schedule."""

    interval: float = 10.0
    intervals: int = DEFAULT_STALE_INTERVALS

    def age(self, n: NodeRow, now: float) -> float | None:
        """Seconds since the node was last appraised (None: never)."""
        return None if n.last_appraised is None else max(0.0, now - n.last_appraised)

    def stale(self, n: NodeRow, now: float) -> bool:
        # next_due is the last appraisal plus one interval (or a lease's expiry while one is
        # in flight): overdue by intervals - 1 more means no appraisal for `intervals`.
        return now - n.next_due > (self.intervals - 1) * self.interval

    def state(self, n: NodeRow, now: float) -> NodeStatus:
        return NodeStatus.STALE if self.stale(n, now) else n.verdict

    def to_json(self, n: NodeRow, now: float) -> dict[str, Any]:
        age = self.age(n, now)
        stale = self.stale(n, now)
        return {
            "age": None if age is None else round(age, 3),
            "stale": stale,
            "state": NodeStatus.STALE if stale else n.verdict,
        }


def node_json(n: NodeRow, *, ear: bool = True, now: float, freshness: Freshness) -> dict[str, Any]:
    """The node as REST and ``fleet ls --json`` show it: its stored verdict with its ``age``
    (seconds since its last appraisal), ``stale`` and ``state`` (the verdict, or ``stale``)."""
    doc = {**n.to_json(ear=ear), **freshness.to_json(n, now)}
    for k in ("added_at", "next_due", "last_appraised", "last_seen"):
        doc[k] = iso(doc[k])
    return doc
