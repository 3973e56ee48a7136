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


def test_result_documents_name_each_values_tier_as_tier_of_does() -> None:
    """The result documents' table lookups agree with ``Tier.of`` for every value, the ones
    without a tier included, and ``explanations`` keeps exactly the findings worse than
    affirming, verifier malfunctions and unexpected evidence."""
    from datetime import UTC, datetime

    from attest.appraisal import AppraisalResult
    from attest.appraisal.claims import (
        UNEXPECTED_EVIDENCE,
        VERIFIER_MALFUNCTION,
        Claim,
        Finding,
        claim_results,
        tier_label,
        verdict_of,
    )

    values = range(-3, 131)
    for v in values:
        assert tier_label(v) == Tier.of(v).label
    findings = tuple(
        Finding(list(Claim)[i % len(Claim)], v, f"check-{i}", f"value {v}")
        for i, v in enumerate(values)
    )
    claims = claim_results(findings)
    r = AppraisalResult(
        "n", verdict_of(claims), claims, findings, None, "p", b"", datetime.now(UTC)
    )
    doc = r.to_json()
    assert [f["tier"] for f in doc["findings"]] == [Tier.of(v).label for v in values]
    assert [f["claim"] for f in doc["findings"]] == [f.claim.value for f in findings]
    assert {k: c["tier"] for k, c in doc["claims"].items()} == {
        c.claim.value: Tier.of(c.value).label for c in claims
    }
    assert doc["verdict"] == r.verdict.value
    assert doc["trustworthiness_vector"] == {c.claim.value: c.value for c in claims if c.value}
    want = [
        f"value {v}"
        for v in values
        if Tier.of(v) > Tier.AFFIRMING or v in (VERIFIER_MALFUNCTION, UNEXPECTED_EVIDENCE)
    ]
    assert doc["explanations"] == want and list(r.explanations) == want
    assert "value 31" not in want and "value 32" in want and "value 130" not in want
    json.dumps(doc)  # plain JSON: no enum member left in it


def test_claim_results_and_first_divergence_agree_with_their_definition() -> None:
    """Random findings (values with and without a tier, several per claim, ties within a
    tier): each claim's value is its worst finding by (tier, value), the first such on a tie;
    the verdict is the worst claim's tier; the first divergence is the first finding of the
    worst tier."""
    import random

    from attest.appraisal.claims import (
        NO_CLAIM,
        Claim,
        Finding,
        claim_results,
        first_divergence,
        verdict_of,
    )

    rng = random.Random(18)
    values = [-7, -1, 0, 1, 2, 3, 31, 32, 33, 95, 96, 97, 99, 127, 128, 500]
    for _ in range(500):
        findings = [
            Finding(rng.choice(list(Claim)), rng.choice(values), f"c{i}", f"e{i}")
            for i in range(rng.randrange(0, 12))
        ]
        got = claim_results(findings)
        assert [c.claim for c in got] == list(Claim)
        for c in got:
            mine = tuple(f for f in findings if f.claim is c.claim)
            assert c.findings == mine
            want = max(mine, key=lambda f: (Tier.of(f.value), f.value)).value if mine else NO_CLAIM
            assert c.value == want
        verdict = verdict_of(got)
        worst = max((Tier.of(c.value) for c in got), default=Tier.NONE)
        assert verdict.tier is worst or (verdict is Verdict.UNAPPRAISABLE and worst is Tier.NONE)
        first = first_divergence(findings, verdict)
        worst_f = max((Tier.of(f.value) for f in findings), default=Tier.NONE)
        if worst_f > Tier.AFFIRMING:
            assert first == next(f.explanation for f in findings if Tier.of(f.value) is worst_f)
        elif verdict is Verdict.UNAPPRAISABLE:
            assert first == (findings[0].explanation if findings else "no claim could be made")
        else:
            assert first is None
