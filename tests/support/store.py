"""The fleet store as the tests drive it: five simulated nodes' enrollments and an appraisal
``Outcome`` built for a leased node."""

from __future__ import annotations

from attest.testing.fleet_sim import SimFleet
from attest.verifier.fleet.store import Leased, Outcome

SIM = SimFleet(5)


def outcome(node: Leased, at: float, verdict: str = "affirming", **kw: object) -> Outcome:
    """An appraisal of ``node`` at ``at`` with ``verdict``; ``kw`` overrides any field."""
    doc = dict(
        node_id=node.node_id,
        token=node.token,
        at=at,
        verdict=verdict,
        explanation=f"{verdict} at {at}",
        first_divergence=None,
        release="1.0.0",
        clock=None,
        result={"status": verdict},
        error="",
        failures=0,
        next_due=at + 10,
        seq=node.appraisals + 1,
        previous_verdict=node.verdict,
    )
    doc.update(kw)
    return Outcome(**doc)  # type: ignore[arg-type]
