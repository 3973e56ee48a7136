"""Affirming means a blessed release on a trusted identity, or nothing (issue 14): the node never
chooses what the verifier checks, and not knowing is never fine. One test per refusal."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from tests.support.appraisal import (
    Node,
    make_node,
    make_registry,
    run,
)

from attest.appraisal import AppraisalResult
from attest.appraisal.claims import Claim, Verdict
from attest.appraisal.memory import AuditHead, Continuity
from attest.appraisal.rules import DEFAULT_POLICY_ID, VerifierRules, parse_rules
from attest.enroll import EnrollmentStrength
from attest.errors import ConfigError, EvidenceFormatError
from attest.manifest.model import VerifiedRegistry
from attest.model import HashAlg, PcrValues


@pytest.fixture(scope="module")
def good() -> Node:
    return make_node()


@pytest.fixture(scope="module")
def registry(good: Node) -> VerifiedRegistry:
    return make_registry(good)


def checks(r: AppraisalResult) -> dict[str, int]:
    return {f.check: f.value for f in r.findings}


# --- 1. no release identified ----------------------------------------------------------------


def test_node_showing_no_root_hash_is_contraindicated(registry: VerifiedRegistry) -> None:
    node = make_node(verity_event=False)
    node.cmdline = None  # nor a command line the verifier could authenticate
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.FILE_SYSTEM).value == 96
    assert "release the node runs is not identified" in (r.first_divergence or "")


def test_a_developer_rule_may_allow_an_unidentified_release(registry: VerifiedRegistry) -> None:
    node = make_node(verity_event=False)
    node.cmdline = None
    rules = VerifierRules(allow_unidentified_release=True)
    r = run(node, registry, rules=rules)
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.policy_id.startswith("attest/custom@") and r.policy_id != DEFAULT_POLICY_ID
    assert any("allowed by the verifier's rules" in f.explanation for f in r.findings)


def test_no_registry_is_at_best_a_warning_naming_it(good: Node) -> None:
    r = run(good, None)
    assert r.verdict is Verdict.WARNING
    assert r.claim(Claim.EXECUTABLES).value == 33
    assert r.policy_id == DEFAULT_POLICY_ID
    relaxed = run(good, None, rules=VerifierRules(allow_unidentified_release=True))
    assert relaxed.verdict is Verdict.AFFIRMING


# --- the platform: firmware PCRs equal a signed reference, or the policy waives it -----------


def test_no_platform_named_is_at_best_a_warning_naming_it(
    good: Node, registry: VerifiedRegistry
) -> None:
    r = run(good, registry, platform_id=None)
    assert r.verdict is Verdict.WARNING, r.explanations
    assert r.claim(Claim.HARDWARE).value == 32
    assert checks(r)["platform"] == 32
    assert "platform not appraised: no platform named" in (r.first_divergence or "")
    assert run(good, registry).verdict is Verdict.AFFIRMING  # the same node, platform named


def test_a_policy_may_waive_the_platform_and_the_result_says_so(
    good: Node, registry: VerifiedRegistry
) -> None:
    rules = VerifierRules(waive_platform=True)
    r = run(good, registry, platform_id=None, rules=rules)
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.claim(Claim.HARDWARE).value == 0  # no claim, and why
    why = r.claim(Claim.HARDWARE).findings[0].explanation
    assert "waived by the verifier's policy attest/custom@" in why, why
    assert r.policy_id == rules.policy_id != DEFAULT_POLICY_ID
    assert rules.policy_id in why


def test_a_named_platform_is_appraised_even_when_the_policy_waives_it(good: Node) -> None:
    other = PcrValues({HashAlg.SHA256: {0: b"\x01" * 32}})
    r = run(
        good, make_registry(good, platform_pcrs=other), rules=VerifierRules(waive_platform=True)
    )
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["platform"] == 96


def test_a_quote_covering_none_of_the_platform_pcrs_is_a_warning(good: Node) -> None:
    sha1_only = PcrValues({HashAlg.SHA1: {0: b"\x00" * 20}})  # a bank the verifier did not ask for
    r = run(good, make_registry(good, platform_pcrs=sha1_only))
    assert r.verdict is Verdict.WARNING, r.explanations
    assert "the quote covers none of the PCRs" in (r.first_divergence or "")


@pytest.mark.parametrize("bad", ["yes", 1, None, "true"])
def test_rules_refuse_a_waiver_that_is_not_a_boolean(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules(json.dumps({"waive_platform": bad}).encode())
    assert err.value.key == "waive_platform"


# --- 2. the runtime PCR is the verifier's -------------------------------------------------


def test_enrollment_with_another_runtime_pcr_is_refused(good: Node, registry: Any) -> None:
    enrolled = dataclasses.replace(good.enrollment, runtime_pcr=16)
    r = run(good, registry, enrollment=enrolled)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["runtime-pcr"] == 96
    assert "re-enroll" in (r.first_divergence or "")


def test_runtime_log_relabelled_to_another_pcr_does_not_replay(registry: Any) -> None:
    """A relay claims PCR 10 and replays a curated log there: the verifier replays into 13."""
    node = make_node()
    doc = node.evidence(b"n" * 32)
    moved = []
    for rec in doc["runtime_log"]["records"]:
        moved.append({**rec, "pcr": 10})
    doc["runtime_log"] = {"pcr": 10, "start": 0, "records": moved}
    r = run(node, registry, doc=doc)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["runtime-log"] == 96


@pytest.mark.parametrize("bad", ["abc", None, [13], 99, -1, 16, 23, 7, True, 13.0])
def test_rules_refuse_a_malformed_or_unsafe_runtime_pcr(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules(json.dumps({"runtime_pcr": bad}).encode())
    assert err.value.key == "runtime_pcr"


def test_rules_refuse_unknown_keys_and_parse_toml() -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules(b'{"runtime_prc": 13}')
    assert err.value.key == "runtime_prc"
    rules = parse_rules(b"runtime_pcr = 14\nallow_unidentified_release = true\n")
    assert rules == VerifierRules(runtime_pcr=14, allow_unidentified_release=True)
    with pytest.raises(ConfigError):
        parse_rules(b"\xff\xfe")


@pytest.mark.parametrize(
    "text",
    [
        '{"a":' * 6000 + "1" + "}" * 6000,  # JSON nested past the parser's recursion limit
        "a = " + "{b = " * 5000 + "1" + "}" * 5000,  # TOML likewise
        "runtime_pcr = " + "9" * 5000,  # past Python's int digit limit
    ],
    ids=["deep-json", "deep-toml", "huge-int"],
)
def test_rules_refuse_hostile_nesting_as_a_config_error(text: str) -> None:
    """Not a RecursionError or ValueError escaping as exit 70 of attest verify --policy."""
    with pytest.raises(ConfigError, match="neither JSON nor TOML") as err:
        parse_rules(text.encode())
    assert err.value.key == "policy"


# --- 3. withholding is not cheaper than lying ------------------------------------------------


def _without_runtime_log(node: Node, nonce: bytes) -> dict[str, Any]:
    doc = node.evidence(nonce)
    doc["runtime_log"] = None
    return doc


def test_withheld_runtime_log_after_it_was_seen_is_contraindicated(registry: Any) -> None:
    node = make_node()
    first = run(node, registry)
    assert first.verdict is Verdict.AFFIRMING, first.explanations
    assert first.continuity is not None and first.continuity.runtime_seen
    later = run(
        node,
        registry,
        doc=_without_runtime_log(node, b"n" * 32),
        continuity=first.continuity,
        previous=first.clock,
    )
    assert later.verdict is Verdict.CONTRAINDICATED
    assert "withheld its runtime log" in (later.first_divergence or "")


def test_runtime_log_withheld_on_first_contact_is_never_affirming(registry: Any) -> None:
    node = make_node()
    r = run(node, registry, doc=_without_runtime_log(node, b"n" * 32))
    assert r.verdict is not Verdict.AFFIRMING


# --- 4. history deleted across a reboot ------------------------------------------------------


def _rebooted(node: Node, *, keep_audit: bool, n_audit: int = 3) -> Node:
    """The same TPM after a reset: firmware measured again and a fresh runtime log that anchors
    the audit head at start. ``keep_audit`` False: the node's root deleted the audit log before
    attestd-tpm started, so the chain starts afresh (other entries, other hashes)."""
    boot = make_node(n_audit=n_audit, audit_user="op" if keep_audit else "someone-else")
    boot.tpm.reset_count = node.tpm.reset_count + 1  # same seed, same AK: the same TPM
    return boot


def test_audit_history_deleted_across_a_reboot_is_contraindicated(registry: Any) -> None:
    node = make_node()
    first = run(node, registry)
    assert first.continuity is not None and first.continuity.audit_head is not None
    assert first.continuity.audit_head.seq == 2
    rebooted = _rebooted(node, keep_audit=False)
    r = run(rebooted, registry, continuity=first.continuity)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["audit-history"] == 96
    assert "audit entry #2" in (r.first_divergence or "")
    # The refused head is kept: the refusal repeats until someone re-enrolls the node.
    assert r.continuity is not None and r.continuity.audit_head == first.continuity.audit_head
    again = run(rebooted, registry, continuity=r.continuity)
    assert again.verdict is Verdict.CONTRAINDICATED


def test_audit_history_that_continues_is_affirming(registry: Any) -> None:
    node = make_node()
    first = run(node, registry)
    rebooted = _rebooted(node, keep_audit=True, n_audit=4)  # the same chain, one entry more
    r = run(rebooted, registry, continuity=first.continuity)
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert checks(r)["audit-history"] == 2
    assert r.continuity is not None and r.continuity.audit_head is not None
    assert r.continuity.audit_head.seq == 3


def test_audit_history_checked_on_anchors_when_entries_are_not_fetched(registry: Any) -> None:
    node = make_node()
    first = run(node, registry)
    deleted = _rebooted(node, keep_audit=False, n_audit=2)  # fewer entries than verified
    r = run(deleted, registry, continuity=first.continuity, audit_entries=None)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["audit-history"] == 96
    grown = _rebooted(node, keep_audit=False, n_audit=5)
    r2 = run(grown, registry, continuity=first.continuity, audit_entries=None)
    assert checks(r2)["audit-history"] == 32  # grew across a reset: not verifiable, a warning
    assert r2.verdict is Verdict.WARNING


def test_every_tpm_reset_is_reported(registry: Any) -> None:
    node = make_node()
    first = run(node, registry)
    rebooted = _rebooted(node, keep_audit=True)
    r = run(rebooted, registry, continuity=first.continuity)
    assert any("TPM reset since this verifier's last appraisal" in n for n in r.notes)
    assert r.continuity is not None and r.continuity.reset_count == rebooted.tpm.reset_count


def test_an_identity_alarm_does_not_move_what_is_remembered(good: Node, registry: Any) -> None:
    remembered = Continuity(AuditHead(7, b"\x01" * 32), reset_count=1, runtime_seen=True)
    other = make_node(seed=b"another TPM")
    r = run(other, registry, enrollment=good.enrollment, continuity=remembered)
    assert r.verdict is Verdict.ALARM
    assert r.continuity == remembered


# --- stored forms ----------------------------------------------------------------------------


def test_continuity_round_trips_and_refuses_garbage() -> None:
    c = Continuity(AuditHead(3, bytes(range(32))), reset_count=9, runtime_seen=True)
    assert Continuity.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert Continuity.from_json(Continuity().to_json()) == Continuity()
    for bad in [
        None,
        [],
        {},
        {**c.to_json(), "reset_count": -1},
        {**c.to_json(), "runtime_seen": 1},
    ]:
        with pytest.raises(EvidenceFormatError):
            Continuity.from_json(bad)
    head = {**c.to_json(), "audit_head": {"seq": "3", "entry_hash": "00" * 32}}
    with pytest.raises(EvidenceFormatError):
        Continuity.from_json(head)


def test_enrollment_strength_is_shown_with_every_verdict(good: Node, registry: Any) -> None:
    r = run(good, registry)
    assert r.enrollment == EnrollmentStrength.ACTIVATED == r.to_json()["enrollment"]
    tofu = dataclasses.replace(good.enrollment, activated=False)
    assert run(good, registry, enrollment=tofu).to_json()["enrollment"] == "tofu"


# --- 5. audit entries written while the broker was stopped -----------------------------------


def _late(first: int, last: int, *, clean: bool, previous_boot: bool = False) -> Any:
    content = {"first_seq": first, "last_seq": last, "clean_stop": clean}
    return ("audit-unanchored", {**content, "previous_boot": previous_boot})


def test_audit_entries_appended_after_a_clean_stop_are_contraindicated(registry: Any) -> None:
    node = make_node(n_audit=3, extra_events=[_late(1, 2, clean=True)])
    r = run(node, registry)
    assert r.verdict is Verdict.CONTRAINDICATED
    assert checks(r)["audit-unanchored"] == 96
    assert "entries #1..#2 were appended to audit.log while attestd-tpm was stopped" in (
        r.first_divergence or ""
    )
    assert "not written by attest" in (r.first_divergence or "")


def test_audit_entries_anchored_late_after_an_unclean_stop_are_a_warning(registry: Any) -> None:
    node = make_node(n_audit=3, extra_events=[_late(2, 2, clean=False, previous_boot=True)])
    r = run(node, registry)
    assert r.verdict is Verdict.WARNING, r.explanations
    assert checks(r)["audit-unanchored"] == 32
    text = r.first_divergence or ""
    assert "entry #2 was found unanchored" in text and "unclean stop before a TPM reset" in text


def test_a_node_without_late_audit_entries_has_no_such_finding(registry: Any) -> None:
    r = run(make_node(), registry)
    assert r.verdict is Verdict.AFFIRMING and "audit-unanchored" not in checks(r)
