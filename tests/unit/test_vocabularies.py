"""The verdict and state vocabularies are enums whose values are the strings the JSON, the EAR,
the metrics and the fleet's database carry: these pin the strings and the orders."""

from __future__ import annotations

import json

import pytest

from attest.appraisal.claims import Tier, Verdict
from attest.appraisal.ear import STATUSES
from attest.appraisal.selfcheck import SelfVerdict
from attest.verifier.fleet.model import SEVERITY, NodeStatus, rank


def test_ear_statuses_are_the_tier_labels() -> None:
    assert STATUSES == ("none", "affirming", "warning", "contraindicated")
    assert [Tier.of_label(s) for s in STATUSES] == list(Tier)


def test_an_unknown_ear_status_names_no_tier() -> None:
    for bad in ("Affirming", "alarm", "", None, 1):
        with pytest.raises(ValueError, match="not an ear.status"):
            Tier.of_label(bad)


def test_alarm_is_contraindicated_and_could_not_appraise_is_none_in_the_ear() -> None:
    assert {v: v.ear_status for v in Verdict} == {
        Verdict.AFFIRMING: "affirming",
        Verdict.WARNING: "warning",
        Verdict.CONTRAINDICATED: "contraindicated",
        Verdict.ALARM: "contraindicated",
        Verdict.UNAPPRAISABLE: "none",
    }


def test_every_ear_status_is_a_fleet_node_status() -> None:
    assert {NodeStatus.of_tier(t) for t in Tier} == {
        NodeStatus.NONE,
        NodeStatus.AFFIRMING,
        NodeStatus.WARNING,
        NodeStatus.CONTRAINDICATED,
    }


def test_fleet_severity_order_and_strings_are_unchanged() -> None:
    # The metrics' label order and the pages' order: most severe first; stale is never stored.
    assert list(SEVERITY) == [
        "contraindicated",
        "unreachable",
        "warning",
        "none",
        "unenrolled",
        "affirming",
    ]
    assert NodeStatus.STALE not in SEVERITY
    states = ["affirming", "stale", "contraindicated", "something-new", "unreachable", "none"]
    assert sorted(states, key=rank) == [
        "contraindicated",
        "unreachable",
        "stale",
        "none",
        "affirming",
        "something-new",
    ]


def test_node_status_is_its_string_in_json_and_text() -> None:
    assert json.dumps({NodeStatus.UNREACHABLE: NodeStatus.STALE}) == '{"unreachable": "stale"}'
    assert f"{NodeStatus.UNENROLLED}" == "unenrolled" and NodeStatus.NONE.upper() == "NONE"


def test_self_verdicts_worst_first() -> None:
    assert [v.value for v in SelfVerdict] == [
        "degraded",
        "revoked",
        "not-blessed",
        "corrupted",
        "unknown",
        "warning",
        "blessed",
        "ok",
    ]
