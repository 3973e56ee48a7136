"""Rollout shares and embargo clocks: the quiet period starts when the whole fleet runs the
embargoed release; the due date and the overdue state follow."""

from __future__ import annotations

from datetime import timedelta

from tests.fleet.conftest import Registry
from tests.support.manifest import NOW

from attest.manifest import edit, verify_snapshot
from attest.manifest.evaluate import EmbargoState
from attest.verifier.fleet.model import NodeRow
from attest.verifier.fleet.rollout import completed_embargoes, rollout


def row(i: int, release: str | None, verdict: str = "affirming") -> NodeRow:
    return NodeRow(
        f"n{i}", "http://x", True, 0.0, 0.0, verdict, "", None, release, 1.0, 1.0, "", 0, 1
    )


def test_quiet_period_starts_when_the_whole_fleet_runs_the_patch(registry: Registry) -> None:
    partial = [row(0, "1.2.0"), row(1, "1.1.0"), row(2, None, "unreachable")]
    r = {x.version: x for x in rollout(partial, registry.verified, {}, now=NOW)}
    assert r["1.2.0"].embargo is EmbargoState.AWAITING_FLEET
    assert abs(r["1.2.0"].share - 1 / 3) < 1e-9
    assert completed_embargoes(list(r.values())) == []  # an unreachable node proves nothing

    whole = [row(i, "1.2.0") for i in range(3)]
    report = rollout(whole, registry.verified, {}, now=NOW)
    assert completed_embargoes(report) == ["1.2.0"]
    observed = {"1.2.0": NOW.timestamp()}
    r = {x.version: x for x in rollout(whole, registry.verified, observed, now=NOW)}
    assert r["1.2.0"].embargo is EmbargoState.QUIET_PERIOD
    assert r["1.2.0"].fleet_complete_source == "observed"
    assert r["1.2.0"].disclosure_due == NOW + timedelta(days=10)
    assert "attest manifest fleet-complete 1.2.0 --at" in r["1.2.0"].note
    late = {
        x.version: x
        for x in rollout(
            whole, registry.verified, observed, now=NOW + timedelta(days=10, seconds=1)
        )
    }
    assert late["1.2.0"].overdue and late["1.2.0"].to_json()["overdue"] is True


def test_the_signed_fleet_complete_date_wins_over_the_observed_one(registry: Registry) -> None:
    snap = edit.fleet_complete(registry.verified.snapshot, "1.2.0", at=NOW - timedelta(days=11))
    signed = verify_snapshot(registry.world.root, registry.world.registry_bytes(snap), now=NOW)
    r = {
        x.version: x
        for x in rollout([row(0, "1.2.0")], signed, {"1.2.0": NOW.timestamp()}, now=NOW)
    }
    assert r["1.2.0"].fleet_complete_source == "registry" and r["1.2.0"].overdue
