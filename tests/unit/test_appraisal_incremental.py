"""``attest.appraisal.appraise_incremental``: what a verifier that keeps a ``NodeMemory`` per
node concludes equals what ``appraise`` concludes from the whole logs.

The node is ``tests/unit/test_appraisal.py``'s (a FakeTpm extended with the real OVMF firmware
log and a runtime log with audit anchors). Each poll asks for the logs from where the memory
ends, as the fleet poller does; when the answer is ``complete=False`` (or the node would answer
HTTP 400: an offset past the end of its log) the poll is repeated for the whole logs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.support.appraisal import (
    AUDIT_KEY,
    PLATFORM,
    RUNTIME_PCR,
    SELECTION,
    Node,
    blessed,
    make_node,
    make_registry,
    measure,
)
from tests.support.manifest import NOW

from attest.appraisal import AppraisalResult, Appraised, appraise, appraise_incremental
from attest.appraisal.claims import Claim, Verdict
from attest.appraisal.memory import FirmwareReplayCache, NodeMemory
from attest.audit import ZERO_HASH, new_entry
from attest.eventlog import parse_event_log
from attest.eventlog.cel import loads_cel
from attest.evidence import b64
from attest.manifest import edit
from attest.manifest.model import VerifiedRegistry
from attest.model import HashAlg, PcrValues
from attest.runtime import verify_runtime_log, verify_runtime_log_from

KINDS: list[tuple[str, Any]] = [
    # the MAC policy: two variants, one of them blessed by policy_registry's release
    (
        "policy",
        lambda i: {"mac": "selinux", "sha256": hashlib.sha256(b"pol%d" % (i % 3 > 0)).hexdigest()},
    ),
    ("config", lambda i: {"sha256": hashlib.sha256(b"cfg%d" % i).hexdigest()}),
    ("daemon-start", lambda i: {"version": f"0.{i}.0"}),
    ("nv-counter", lambda i: {"index": 0x01500020, "value": i}),
    ("tls-key", lambda i: {"spki_sha256": hashlib.sha256(b"tls%d" % i).hexdigest()}),
    ("config", lambda i: {"sha256": ("33" if i % 2 else "44") * 32}),  # blessed, or not
]


@pytest.fixture(scope="module")
def registry() -> VerifiedRegistry:
    return make_registry(make_node())


@pytest.fixture(scope="module")
def policy_registry() -> VerifiedRegistry:
    """Release 1.4.2 blesses a runtime policy: SELinux ``pol1`` and config ``33…``."""
    node = make_node()
    rel = dataclasses.replace(
        blessed(),
        policies=edit.policies(
            mac={"selinux": hashlib.sha256(b"pol1").digest()}, config=[bytes.fromhex("33" * 32)]
        ),
    )
    return make_registry(node, releases=[rel])


# --- a node that keeps living ----------------------------------------------------------------


def record_audit(node: Node, *, anchor: bool = True) -> None:
    """An operator login: the entry, and (unless ``anchor`` is False: not yet measured) its
    anchor in the runtime log."""
    prev = bytes.fromhex(node.audit[-1]["entry_hash"]) if node.audit else ZERO_HASH
    seq = len(node.audit)
    entry = new_entry(
        AUDIT_KEY,
        {
            "event": "login",
            "user": f"op{seq}",
            "service": "sshd",
            "result": "success",
            "time": "2025-05-30T10:00:00Z",
        },
        seq=seq,
        prev_hash=prev,
    )
    node.audit.append(entry.to_json())
    if anchor:
        anchor_pending(node)


def anchor_pending(node: Node) -> None:
    anchored = {
        r["content"]["audit_seq"] for r in node.records if r["content_type"] == "attest/audit"
    }
    for a in node.audit:
        if a["seq"] not in anchored and (not anchored or a["seq"] > max(anchored)):
            measure(node, "audit", {"audit_seq": a["seq"], "entry_hash": a["entry_hash"]})


def reboot(node: Node) -> None:
    """TPM reset: PCRs cleared, firmware measured again, a fresh runtime log that checkpoints
    the audit head (the audit log itself persists)."""
    node.tpm.reset()
    for e in parse_event_log(node.fw).events:
        if e.type != 0x3 and HashAlg.SHA256 in e.digests:
            node.tpm.extend(e.pcr, {HashAlg.SHA256: e.digests[HashAlg.SHA256]})
    node.records.clear()
    measure(node, "daemon-start", {"version": "0.1.0", "boot_id": "again"})
    if node.audit:
        last = node.audit[-1]
        measure(node, "audit", {"audit_seq": last["seq"], "entry_hash": last["entry_hash"]})


def incremental_doc(full: dict[str, Any], memory: NodeMemory) -> dict[str, Any] | None:
    """What the node answers to ``memory.log_request()``; None for attestd's HTTP 400 (an
    offset past the end of a log)."""
    data = base64.b64decode(full["firmware_log"]["data"])
    records = full["runtime_log"]["records"]
    fw_start, rt_start = memory.firmware_size, memory.runtime_next
    if fw_start > len(data) or rt_start > len(records):
        return None
    return {
        **full,
        "firmware_log": {"start": fw_start, "total": len(data), "data": b64(data[fw_start:])},
        "runtime_log": {**full["runtime_log"], "start": rt_start, "records": records[rt_start:]},
    }


def args(node: Node, registry: VerifiedRegistry | None, nonce: bytes) -> dict[str, Any]:
    return {
        "enrollment": node.enrollment,
        "nonce": nonce,
        "selection": SELECTION,
        "registry": registry,
        "platform_id": PLATFORM,
        "previous": None,
        "tls_binding": None,
        "now": NOW,
    }


def poll(
    node: Node,
    memory: NodeMemory,
    registry: VerifiedRegistry | None,
    *,
    nonce: bytes = b"n" * 32,
    cache: FirmwareReplayCache | None = None,
) -> tuple[Appraised, AppraisalResult, bool]:
    """One poll as the fleet poller makes it; returns (incremental answer, full appraisal of
    the same quote and whole logs, whether the whole logs had to be fetched again)."""
    full_doc = node.evidence(nonce)
    kw = args(node, registry, nonce)
    kw_inc = {**kw, "cache": cache}
    doc = incremental_doc(full_doc, memory)
    refetched = doc is None
    a: Appraised | None = None
    if doc is not None:
        a = appraise_incremental(
            doc, memory=memory, audit_entries=node.audit[memory.audit_next :], **kw_inc
        )
        if not a.complete:
            assert not a.memory.holds_logs
            memory, refetched = a.memory, True
    if refetched:
        a = appraise_incremental(
            full_doc, memory=memory.forget_logs(), audit_entries=node.audit, **kw_inc
        )
        assert a.complete
    assert a is not None
    return a, appraise(full_doc, audit_entries=node.audit, **kw), refetched


# --- the property ----------------------------------------------------------------------------

ACTION = st.one_of(
    st.tuples(st.just("event"), st.integers(0, len(KINDS) - 1), st.integers(0, 1000)),
    st.tuples(st.just("audit"), st.booleans(), st.just(0)),  # anchored now, or later
    st.tuples(st.just("anchor"), st.just(0), st.just(0)),
    st.tuples(st.sampled_from(["reboot", "tamper", "rotate", "pcr7"]), st.just(0), st.just(0)),
)


CACHE = FirmwareReplayCache(size=4)  # small: evictions happen too


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    polls=st.lists(st.lists(ACTION, max_size=4), min_size=1, max_size=6),
    with_registry=st.sampled_from([0, 1, 2]),
    shared_cache=st.booleans(),
)
# a blessed MAC policy and config, then a policy and a config the release does not bless
@example(
    polls=[
        [("event", 0, 1), ("event", 5, 1)],
        [("event", 2, 0)],
        [("event", 0, 0)],
        [("event", 0, 1), ("event", 5, 0)],
        [("reboot", 0, 0)],
    ],
    with_registry=2,
    shared_cache=False,
)
def test_incremental_appraisal_equals_full_appraisal(
    polls: list[list[tuple[str, int, int]]],
    with_registry: int,
    shared_cache: bool,
    registry: VerifiedRegistry,
    policy_registry: VerifiedRegistry,
) -> None:
    """Random histories (runtime events, audit entries anchored at once or later, TPM resets,
    hidden extensions of the runtime PCR or PCR 7, a log rotated behind the TPM's back; a
    registry whose release blesses a MAC policy and config digest, or none): after
    every poll the incremental verifier's result is the full appraisal's, to the last word --
    also with a firmware replay cache shared by every node (and every example) of the run."""
    node = make_node()
    reg = (None, registry, policy_registry)[with_registry]  # none, plain, blessing policies
    cache = CACHE if shared_cache else None
    memory = NodeMemory()
    for step, actions in enumerate(polls):
        for what, a, b in actions:
            if what == "event":
                kind, content = KINDS[a]
                measure(node, kind, content(b))
            elif what == "audit":
                record_audit(node, anchor=bool(a))
            elif what == "anchor":
                anchor_pending(node)
            elif what == "reboot":
                reboot(node)
            elif what == "tamper":
                node.tpm.extend(RUNTIME_PCR, {HashAlg.SHA256: hashlib.sha256(b"x").digest()})
            elif what == "rotate":
                node.records.clear()
            elif what == "pcr7":
                node.tpm.extend(7, {HashAlg.SHA256: hashlib.sha256(b"late").digest()})
        got, full, _ = poll(node, memory, reg, nonce=bytes([step]) * 32, cache=cache)
        assert got.result.to_json() == full.to_json()
        memory = got.memory


def test_runtime_replay_from_a_prefix_equals_the_full_replay() -> None:
    node = make_node()
    for i in range(7):
        kind, content = KINDS[i % len(KINDS)]
        measure(node, kind, content(i))
    records = loads_cel(json.dumps(node.records))
    quoted = node.pcrs()
    for cut in range(len(records) + 1):
        prefix_quote = PcrValues({HashAlg.SHA256: {RUNTIME_PCR: _replay(records[:cut])}})
        held = verify_runtime_log_from(None, records[:cut], prefix_quote, pcr=RUNTIME_PCR)
        rest = verify_runtime_log_from(held, records[cut:], quoted, pcr=RUNTIME_PCR)
        assert rest.log == verify_runtime_log(records, quoted, pcr=RUNTIME_PCR)
        assert rest.anchors == rest.log.audit_anchors


def _replay(records: Any) -> bytes:
    value = bytes(32)
    for r in records:
        value = hashlib.sha256(value + r.digests[HashAlg.SHA256]).digest()
    return value


# --- what is fetched -------------------------------------------------------------------------


def test_second_poll_fetches_nothing_old_and_reuses_the_firmware_replay(
    registry: VerifiedRegistry,
) -> None:
    node = make_node()
    first, _, _ = poll(node, NodeMemory(), registry)
    m = first.memory
    assert first.result.verdict is Verdict.AFFIRMING
    assert m.firmware_size == len(node.fw) and m.runtime_next == len(node.records)
    assert m.audit_next == len(node.audit)
    assert m.log_request() == {
        "firmware": {"start": len(node.fw)},
        "runtime": {"start": len(node.records)},
    }
    measure(node, "config", {"sha256": "44" * 32})
    second, full, refetched = poll(node, m, registry)
    assert not refetched and second.complete
    assert second.memory.firmware is m.firmware  # PCRs 0-7 unchanged: the replay stands
    assert second.memory.runtime is not None and second.memory.runtime.next_recnum == 11
    assert second.result.to_json() == full.to_json()


# --- resets and tampering --------------------------------------------------------------------


def test_tpm_reset_forces_a_full_refetch(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    reboot(node)
    full_doc = node.evidence(b"n" * 32)
    doc = incremental_doc(full_doc, m)
    assert doc is None  # the fresh runtime log is shorter: attestd would answer HTTP 400
    doc = {
        **full_doc,
        "firmware_log": {**full_doc["firmware_log"], "start": m.firmware_size, "data": ""},
        "runtime_log": {**full_doc["runtime_log"], "start": 0},
    }  # a node that ignores it
    a = appraise_incremental(doc, memory=m, audit_entries=[], **args(node, registry, b"n" * 32))
    assert not a.complete and not a.memory.holds_logs
    assert "TPM was reset" in (a.result.first_divergence or "")
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.AFFIRMING
    assert got.result.to_json() == full.to_json()


def test_runtime_log_rotated_without_reset_is_contraindicated(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    node.records.clear()  # the broker starts a new log; the PCR keeps the old chain
    for i in range(12):
        measure(node, "config", {"sha256": f"{i:02x}" * 32})
    got, full, refetched = poll(node, m, registry)
    assert refetched
    assert got.result.verdict is Verdict.CONTRAINDICATED
    assert got.result.claim(Claim.CONFIGURATION).value == 96
    assert got.result.to_json() == full.to_json()


def test_hidden_extension_after_the_held_records_is_detected(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    node.tpm.extend(RUNTIME_PCR, {HashAlg.SHA256: hashlib.sha256(b"unlogged").digest()})
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.CONTRAINDICATED
    assert "does not replay" in (got.result.first_divergence or "")
    assert got.result.to_json() == full.to_json()


def test_edited_new_record_is_detected(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    measure(node, "verity-device", {"name": "root", "root_hash": "ab" * 32})
    node.records[-1] = {**node.records[-1], "content": {"name": "root", "root_hash": "cd" * 32}}
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.CONTRAINDICATED
    assert "content is not what was measured" in (got.result.first_divergence or "")
    assert got.result.to_json() == full.to_json()


def test_held_history_is_the_measured_one_even_if_the_node_edits_its_copy(
    registry: VerifiedRegistry,
) -> None:
    """Not re-fetching the prefix loses nothing: the verifier's copy is the one the PCR
    committed to. A node that rewrites a held record (to hide which root file system it
    booted) changes only its own copy; a node that re-sends the rewritten prefix is appraised
    in full and fails."""
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    i = next(k for k, r in enumerate(node.records) if r["content_type"] == "attest/verity-device")
    original = node.records[i]["content"]["root_hash"]
    node.records[i] = {**node.records[i], "content": {"name": "root", "root_hash": "ee" * 32}}
    got, full, _ = poll(node, m, registry)
    assert got.result.verdict is Verdict.AFFIRMING
    assert got.memory.runtime is not None
    assert got.memory.runtime.log.events[i].content["root_hash"] == original
    assert full.verdict is Verdict.CONTRAINDICATED  # the rewritten copy, when sent, fails
    # ... and a node that answers from record 0 with the rewritten copy is appraised in full.
    resent = appraise_incremental(
        node.evidence(b"n" * 32), memory=m, audit_entries=[], **args(node, registry, b"n" * 32)
    )
    assert resent.complete and resent.result.verdict is Verdict.CONTRAINDICATED


def test_truncated_runtime_log_is_refetched_and_fails(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    del node.records[-2:]  # the node drops its newest records: the old offset is past the end
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.CONTRAINDICATED
    assert got.result.to_json() == full.to_json()


def test_firmware_pcr_extended_after_boot_is_not_served_from_the_cache(
    registry: VerifiedRegistry,
) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    node.tpm.extend(7, {HashAlg.SHA256: hashlib.sha256(b"after boot").digest()})
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.CONTRAINDICATED
    assert "sha256:7" in (got.result.first_divergence or "")
    assert got.result.to_json() == full.to_json()


def test_audit_entry_that_does_not_link_to_the_held_head_is_detected(
    registry: VerifiedRegistry,
) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    # The node rewrites its audit history (an earlier entry edited, every later hash
    # recomputed) and anchors a new entry on top of the rewritten chain.
    forged = [dict(e) for e in node.audit]
    prev = ZERO_HASH
    for k, e in enumerate(forged):
        entry = new_entry(
            AUDIT_KEY,
            {
                "event": "login",
                "user": "someone-else" if k == 1 else f"op{k}",
                "source": "10.0.0.9",
                "service": "sshd",
                "result": "success",
                "time": e["time"],
            },
            seq=k,
            prev_hash=prev,
        )
        forged[k] = entry.to_json()
        prev = entry.entry_hash
    node.audit[:] = forged
    record_audit(node)
    got, full, refetched = poll(node, m, registry)
    assert refetched and got.result.verdict is Verdict.CONTRAINDICATED
    assert got.result.to_json() == full.to_json()


def test_changed_enrollment_forgets_the_memory(registry: VerifiedRegistry) -> None:
    node = make_node()
    m = poll(node, NodeMemory(), registry)[0].memory
    other = make_node(seed=b"another TPM")
    enrollment = other.enrollment
    doc = incremental_doc(other.evidence(b"n" * 32), m)
    assert doc is not None
    kw = {**args(other, registry, b"n" * 32), "enrollment": enrollment}
    a = appraise_incremental(doc, memory=m, audit_entries=[], **kw)
    # The held logs were the other AK's: not used (the start offsets make this answer
    # malformed for a fresh verifier, which it reports rather than trusting the memory).
    assert a.memory.ak_public == enrollment.ak_public
    assert a.result.verdict is not Verdict.AFFIRMING


def test_memory_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NodeMemory().firmware_size = 3  # type: ignore[misc]
